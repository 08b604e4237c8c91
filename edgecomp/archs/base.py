"""What every architecture adapter is: module paths of one family's transformer, by role.

An `Adapter` is data: where the stack of blocks sits (relative to the base model, so a family's
*ForSequenceClassification / *ForCausalLM wrappers need no adapter of their own), which Linear inside a
block plays which role (query, key, value or a fused qkv, the attention output, the FFN's up/gate/down),
the block's norms, the token table, the output head, and which roles read one tensor (smoothing groups).
`bind(model)` resolves it against one model instance into a `Layout` with full module paths, which the
compression methods and the size breakdown read. Families register by `config.model_type` in ADAPTERS.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property

from torch import nn

from ..errors import EdgecompError
from ..registry import Registry

# Roles a block's Linear layers may play. A family names the ones it has (a fused "qkv" instead of three).
ATTENTION_ROLES = ("query", "key", "value", "qkv", "attention-output")
FFN_ROLES = ("ffn-gate", "ffn-up", "ffn-down")
ROLES = ATTENTION_ROLES + FFN_ROLES
COMPONENTS = ("token_embeddings", "attention", "feed_forward", "norms_other")


@dataclass(frozen=True)
class Adapter:
    family: str  # config.model_type
    blocks: str  # the nn.ModuleList of blocks, relative to the base model
    roles: dict[str, str]  # role -> Linear path inside a block
    token_table: str  # the input token table, relative to the base model
    norms: tuple[str, ...] = ()  # norm modules inside a block
    shared_inputs: tuple[tuple[str, ...], ...] = ()  # roles whose Linears read one tensor
    # rows of each FFN up Linear per neuron: ModernBERT's Wi and Phi-3's gate_up_proj stack two halves
    # ([up; gate]), neuron j owning rows j and width + j
    ffn_halves: int = 1
    # the FFN's activation module between ffn-up and ffn-down, inside a block (None: not a module of its own,
    # e.g. fused into the up projection's caller); methods that replace the whole FFN (compress/moe.py) read it
    ffn_activation: str | None = None
    head: str | None = None  # output projection, relative to the whole model (LM heads)
    decoder: bool = False
    # one block applied at every depth (ALBERT): a block-by-block method cannot train it per layer
    shared_blocks: bool = False
    linear_types: tuple[type, ...] = field(default=(nn.Linear,))  # what its role modules are
    # decoders: how litert-torch re-authors the family for the .tflite (archs/litert_decoder.py)
    litert: object | None = None

    def __post_init__(self):
        unknown = set(self.roles) - set(ROLES)
        if unknown:
            raise ValueError(f"adapter {self.family}: unknown roles {sorted(unknown)}")

    @property
    def ffn_up_roles(self) -> tuple[str, ...]:
        return tuple(r for r in ("ffn-gate", "ffn-up") if r in self.roles)


ADAPTERS: Registry[Adapter] = Registry("architecture adapter")


def register(adapter: Adapter) -> Adapter:
    ADAPTERS.register(adapter.family)(adapter)
    return adapter


def families(decoder: bool | None = None) -> list[str]:
    return [f for f in ADAPTERS.names() if decoder is None or ADAPTERS.get(f).decoder == decoder]


def _path_regex(path: str) -> str:
    """A dotted module path as a regex over exported names too (ONNX node names use '/' and '.')."""
    return r"(?:^|[./])" + r"[./]".join(re.escape(p) for p in path.split(".")) + r"(?:[./:_]|$)"


@dataclass
class Layout:
    """An adapter resolved against one model: full module paths (with the wrapper's prefix, e.g. `bert.`)."""

    adapter: Adapter
    model: nn.Module
    prefix: str  # "" for a base model, "bert." inside BertForSequenceClassification

    @property
    def family(self) -> str:
        return self.adapter.family

    @property
    def blocks_path(self) -> str:
        return self.prefix + self.adapter.blocks

    @cached_property
    def blocks(self) -> nn.ModuleList:
        return self.model.get_submodule(self.blocks_path)

    @property
    def block_paths(self) -> list[str]:
        return [f"{self.blocks_path}.{i}" for i in range(len(self.blocks))]

    @property
    def token_table_path(self) -> str:
        return self.prefix + self.adapter.token_table

    @property
    def head_path(self) -> str | None:
        return self.adapter.head

    @property
    def tied_head(self) -> bool:
        """The output head reads the token table's tensor (one table in the artifact, not two)."""
        if self.adapter.head is None:
            return False
        head = self.model.get_submodule(self.adapter.head) if _has(self.model, self.adapter.head) else None
        table = self.model.get_submodule(self.token_table_path)
        return head is not None and getattr(head, "weight", None) is getattr(table, "weight", ())

    def roles(self, wanted=None) -> list[str]:
        return [r for r in self.adapter.roles if wanted is None or r in wanted]

    def linears(self, roles=None) -> list[tuple[str, nn.Module]]:
        """(full path, module) of every block's Linear in `roles` (all roles by default), block by block."""
        out = []
        for bp in self.block_paths:
            for role in self.roles(roles):
                name = f"{bp}.{self.adapter.roles[role]}"
                if _has(self.model, name):
                    out.append((name, self.model.get_submodule(name)))
        return out

    def role_of(self, name: str) -> str | None:
        for role, rel in self.adapter.roles.items():
            if re.fullmatch(re.escape(self.blocks_path) + r"\.\d+\." + re.escape(rel), name):
                return role
        return None

    def shared_input_groups(self, names: list[str]) -> list[list[str]]:
        """`names` grouped by the tensor they read (the adapter's shared_inputs, per block); the rest alone."""
        chosen = set(names)
        groups = []
        for bp in self.block_paths:
            for roles in self.adapter.shared_inputs:
                g = [f"{bp}.{self.adapter.roles[r]}" for r in roles if r in self.adapter.roles]
                g = [n for n in g if n in chosen]
                if g:
                    groups.append(g)
        grouped = {n for g in groups for n in g}
        return groups + [[n] for n in names if n not in grouped]

    @cached_property
    def _component_patterns(self) -> list[tuple[str, re.Pattern]]:
        """(component, regex) in precedence order: tables/head, norms, attention, feed-forward."""
        blocks = r"[./]".join(re.escape(p) for p in self.adapter.blocks.split("."))
        def in_block(rels):
            alts = "|".join(r"[./]".join(re.escape(p) for p in rel.split(".")) for rel in rels)
            return re.compile(r"(?:^|[./])" + blocks + r"[./]\d+[./](?:" + alts + r")(?:[./:_]|$)") if rels else None
        tables = [self.adapter.token_table] + ([self.adapter.head] if self.adapter.head else [])
        pats = [("token_embeddings", re.compile("|".join(_path_regex(t) for t in tables))),
                ("norms_other", in_block(self.adapter.norms)),
                ("attention", in_block([self.adapter.roles[r] for r in self.roles(ATTENTION_ROLES)])),
                ("feed_forward", in_block([self.adapter.roles[r] for r in self.roles(FFN_ROLES)]))]
        return [(c, p) for c, p in pats if p is not None]

    def component(self, name: str) -> str | None:
        """The size-breakdown component of a parameter or exported node name, or None if no role owns it."""
        for comp, pat in self._component_patterns:
            if pat.search(name):
                return comp
        return None


def _has(model: nn.Module, name: str) -> bool:
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def _base_prefix(model: nn.Module) -> str:
    """"bert." when `model` wraps its base model (a *ForSequenceClassification), "" when it is the base."""
    attr = getattr(model, "base_model_prefix", "")
    if attr and isinstance(getattr(model, attr, None), nn.Module):
        return attr + "."
    return ""


def layout_of(model: nn.Module) -> Layout | None:
    """The model's layout through its family's adapter, or None for a family without one."""
    family = getattr(getattr(model, "config", None), "model_type", None)
    if family not in ADAPTERS:
        return None
    adapter = ADAPTERS.get(family)
    layout = Layout(adapter, model, _base_prefix(model))
    if not _has(model, layout.blocks_path):  # e.g. a wrapper whose base sits elsewhere: the same as none
        return None
    return layout


def require_layout(model: nn.Module, method: str, decoder_ok: bool = True, needs_linear: bool = False,
                   per_block: bool = False) -> Layout:
    """The layout `method` works from, or a one-line refusal naming the families it supports."""
    family = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    supported = [f for f in families() if _supports(ADAPTERS.get(f), decoder_ok, needs_linear, per_block)]
    layout = layout_of(model)
    if layout is None or not _supports(layout.adapter, decoder_ok, needs_linear, per_block):
        raise EdgecompError(f"the {method} step does not support the {family!r} architecture",
                            f"it supports: {', '.join(supported)}; drop the step for this model")
    return layout


def _supports(adapter: Adapter, decoder_ok: bool, needs_linear: bool, per_block: bool) -> bool:
    return ((decoder_ok or not adapter.decoder)
            and (not needs_linear or adapter.linear_types == (nn.Linear,))
            and (not per_block or not adapter.shared_blocks))
