"""One quantization scheme, typed: what a target's artifact ships by default, what a recipe changes, what every
format adapter (ORT, LiteRT, the causal-LM graphs) stores and what distillation trains against.

A scheme is written as a TOML table, in a target's artifact (``quantization = {...}``) or a recipe's
``[quantization]``::

    weights = {bits = 4, block = 32}            # MatMul / Linear weights
    table = {bits = 4, block = 32}              # token (Gather) tables; default: as the weights
    activations = "dynamic-per-row"             # how the runtime quantizes activations
    ffn = {bits = 2, block = 32}                # causal LMs: the feed-forward MatMuls' own weights
    head_activations = "none"                   # causal LMs: the LM head's activations (default: as the layers)
    litert = {weights = {bits = 4, block = 32}} # what differs in one runtime's artifacts (onnxruntime, litert)

Weights: ``bits`` 8 | 4 | 2; ``block`` a power of two >= 16 (blocks along the input axis), "channel" (one
scale per output channel, the default) or "tensor"; ``grid`` the 4-bit values: "ort" (ORT's quantizer: the
block's extreme maps to -8), "litert" (LiteRT's blockwise recipe: absmax/7, bfloat16-rounded scales) or
"q4_1" (llama.cpp's blocks, min + scale); unset: the format's own. ``symmetric`` (unset: the format's own);
``planes = 2`` stores 8-bit codes as two 4-bit planes (fast 4-bit kernels, same bytes). ``algorithm`` how the
blocks are chosen: "rtn" (round to nearest, the default), "gptq" (GPTQ: the error of each column is
compensated on the columns not yet quantized, from the Hessian of the calibration text's activations; 4 bits),
"hqq" (half-quadratic: scale and zero point fit per block without data; 4 or 2 bits, asymmetric) or
"k-quant" (llama.cpp's k-quant search of each block's scale and minimum; 4 bits, asymmetric): ONNX
Runtime's own implementations (onnxruntime.quantization.matmul_nbits_quantizer), ONNX only. 3-bit weights
have neither a quantizer nor a MatMulNBits kernel in ONNX Runtime (bits 2 | 4 | 8 only).

Activations: "dynamic-per-tensor" (ORT's DynamicQuantizeLinear: ONE range per tensor, so a text's result
depends on its batch), "dynamic-per-row" (LiteRT's dynamic range, MatMulNBits' int8 accuracy level: per
row / block), "none" (weight-only, float math).

Parsing is strict (unknown keys, wrong types, impossible values are refused in one line), and so is each
format: a scheme a format cannot store is refused before any work (see ``FORMAT_QUANT``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

from .errors import EdgecompError

BITS = (8, 4, 2)
GRIDS = ("ort", "litert", "q4_1")
ACTIVATIONS = ("none", "dynamic-per-tensor", "dynamic-per-row")
WHOLE = ("channel", "tensor")  # a block that is not a number of input elements
RUNTIME_KEYS = ("onnxruntime", "litert")  # per-runtime overrides in a recipe's [quantization]
SCHEME_KEYS = ("weights", "table", "activations", "ffn", "head_activations")
WEIGHT_KEYS = ("bits", "block", "grid", "symmetric", "planes", "algorithm")
ALGORITHMS = {"rtn": (8, 4, 2), "gptq": (4,), "hqq": (4, 2), "k-quant": (4,)}  # algorithm -> the bits it writes
ASYMMETRIC_ALGORITHMS = ("hqq", "k-quant")  # a zero point per block by construction


def _refuse(where: str, problem: str, fix: str) -> EdgecompError:
    return EdgecompError(f"{where}: {problem}" if where else problem, fix)


@dataclass(frozen=True)
class WeightQuant:
    """How one kind of weight is stored: bits, blocks along the input axis (or per channel / tensor), grid."""

    bits: int = 8
    block: int | str = "channel"
    grid: str | None = None  # None: the format's own
    symmetric: bool | None = None  # None: the format's own (q4_1 is asymmetric by definition)
    planes: int = 1
    algorithm: str | None = None  # None: round to nearest ("rtn")

    def __post_init__(self):
        if self.bits not in BITS:
            raise EdgecompError(f"weights of {self.bits} bits: no format edgecomp ships stores them",
                                f"use bits = {' | '.join(map(str, BITS))}")
        if isinstance(self.block, str):
            if self.block not in WHOLE:
                raise EdgecompError(f"block = {self.block!r} is unknown", 'use a power of two (e.g. 32), "channel" or "tensor"')
        elif isinstance(self.block, bool) or not isinstance(self.block, int) or self.block < 16 \
                or self.block & (self.block - 1):
            raise EdgecompError(f"block = {self.block!r} is not a power of two >= 16", "use block = 32 (or 64, 128)")
        if self.bits < 8 and not self.blocked:
            raise EdgecompError(f"{self.bits}-bit weights with block = {self.block!r}: sub-byte weights ship in blocks only",
                                "use e.g. block = 32")
        if self.grid not in (None, *GRIDS):
            raise EdgecompError(f"grid = {self.grid!r} is unknown", f"use one of: {', '.join(GRIDS)} (or leave it to the format)")
        if self.grid in ("litert", "q4_1") and self.bits != 4:
            raise EdgecompError(f"grid = {self.grid!r} is a 4-bit grid, and bits = {self.bits}", "use bits = 4, or drop grid")
        if self.grid == "q4_1" and self.symmetric:
            raise EdgecompError('grid = "q4_1" is asymmetric (a minimum and a scale per block)', "drop symmetric")
        if self.grid == "litert" and self.symmetric is False:
            raise EdgecompError('grid = "litert" is symmetric (absmax/7)', "drop symmetric")
        if self.algorithm is not None:
            if self.algorithm not in ALGORITHMS:
                raise EdgecompError(f"algorithm = {self.algorithm!r} is unknown", f"use one of: {', '.join(ALGORITHMS)}")
            if self.bits not in ALGORITHMS[self.algorithm]:
                raise EdgecompError(f"algorithm = {self.algorithm!r} writes {' or '.join(map(str, ALGORITHMS[self.algorithm]))}-bit "
                                    f"weights, and bits = {self.bits}", "change bits, or drop algorithm")
            if self.algorithm != "rtn" and not self.blocked:
                raise EdgecompError(f"algorithm = {self.algorithm!r} quantizes blocks", "use e.g. block = 32")
            if self.algorithm != "rtn" and self.grid not in (None, "ort"):
                raise EdgecompError(f"algorithm = {self.algorithm!r} chooses its own values, and grid = {self.grid!r} fixes them",
                                    "drop grid")
            if self.algorithm in ASYMMETRIC_ALGORITHMS and self.symmetric:
                raise EdgecompError(f"algorithm = {self.algorithm!r} is asymmetric (a zero point per block)", "drop symmetric")
        if self.planes not in (1, 2) or (self.planes == 2 and (self.bits != 8 or not self.blocked)):
            raise EdgecompError(f"planes = {self.planes}: only 8-bit blocks split into two 4-bit planes", "drop planes")

    @property
    def blocked(self) -> bool:
        return isinstance(self.block, int)

    def with_defaults(self, grid: str | None = None, symmetric: bool | None = None) -> "WeightQuant":
        """The format's own grid / symmetry where the scheme leaves them open."""
        return dataclasses.replace(self, grid=self.grid or (grid if self.bits == 4 else None),
                                   symmetric=self.symmetric if self.symmetric is not None else
                                   (False if self.grid == "q4_1" or self.algorithm in ASYMMETRIC_ALGORITHMS else symmetric))

    @property
    def rtn(self) -> bool:
        return self.algorithm in (None, "rtn")

    @property
    def name(self) -> str:
        size = f"b{self.block}" if self.blocked else self.block
        extra = [x for x in (None if self.algorithm in (None, "rtn") else self.algorithm, self.grid,
                             {False: "asym", True: None, None: None}[self.symmetric],
                             "2planes" if self.planes == 2 else None) if x]
        return "-".join([f"int{self.bits}", size, *extra])

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None and not (k == "planes" and v == 1)}


@dataclass(frozen=True)
class QuantScheme:
    """What one artifact stores: weights, tables, activations (+ the causal LMs' feed-forward and head)."""

    weights: WeightQuant | None = None  # None: float weights
    table: WeightQuant | None = None  # None: float tables
    activations: str = "none"
    ffn: WeightQuant | None = None  # None: as the weights
    head_activations: str | None = None  # None: as the activations

    def __post_init__(self):
        for a in (self.activations, self.head_activations):
            if a is not None and a not in ACTIVATIONS:
                raise EdgecompError(f"activations = {a!r} is unknown", f"use one of: {', '.join(ACTIVATIONS)}")
        if self.weights is None and self.activations != "none":
            raise EdgecompError(f"activations = {self.activations!r} with float weights: nothing quantizes them",
                                'state weights, or activations = "none"')

    @property
    def batch_invariant(self) -> bool:
        """False when a runtime quantizes activations with one range per tensor: a text's result then depends
        on the other texts (and padding) of its batch, so `edgecomp run` feeds one text at a time."""
        return "dynamic-per-tensor" not in (self.activations, self.head_activations)

    @property
    def precision(self) -> str:
        """The manifest's short precision: the weights' bits, and the tables' where they differ."""
        if self.weights is None and self.table is None:
            return "fp32"
        w = f"int{self.weights.bits}" if self.weights else "fp32"
        if self.table is not None and self.table.bits != (self.weights.bits if self.weights else None):
            return f"{w}+int{self.table.bits}-tables"
        return w

    @property
    def name(self) -> str:
        parts = [f"weights-{self.weights.name if self.weights else 'fp32'}",
                 f"table-{self.table.name if self.table else 'fp32'}", f"act-{self.activations}"]
        if self.ffn:
            parts.append(f"ffn-{self.ffn.name}")
        if self.head_activations:
            parts.append(f"head-act-{self.head_activations}")
        return ".".join(parts)

    def to_json(self) -> dict:
        out = {"name": self.name, "weights": self.weights.to_json() if self.weights else None,
               "table": self.table.to_json() if self.table else None, "activations": self.activations,
               "batch_invariant": self.batch_invariant}
        if self.ffn:
            out["ffn"] = self.ffn.to_json()
        if self.head_activations:
            out["head_activations"] = self.head_activations
        return out


# --- parsing (the one parser: targets, recipes, model files) -----------------------------------------------
def parse_weights(raw, where: str, key: str) -> WeightQuant | None:
    """``{bits = 4, block = 32, ...}`` or ``"none"`` (float)."""
    if raw == "none":
        return None
    if not isinstance(raw, dict):
        raise _refuse(where, f"{key} = {raw!r} is not a table", f"write {key} = {{bits = 8}} or {key} = \"none\"")
    unknown = sorted(set(raw) - set(WEIGHT_KEYS))
    if unknown:
        raise _refuse(where, f"unknown key {unknown[0]!r} in {key}", f"use only: {', '.join(WEIGHT_KEYS)}")
    types = {"bits": int, "block": (int, str), "grid": str, "symmetric": bool, "planes": int, "algorithm": str}
    for k, v in raw.items():
        if not isinstance(v, types[k]) or (types[k] is int and isinstance(v, bool)):
            raise _refuse(where, f"{key}.{k} = {v!r} has the wrong type", f"see `{key}` in the docs of edgecomp.quant")
    if "bits" not in raw:
        raise _refuse(where, f"{key} states no bits", f"write e.g. {key} = {{bits = 8}}")
    try:
        return WeightQuant(**raw)
    except EdgecompError as e:
        raise _refuse(where, f"{key}: {e.problem}", e.fix) from None


def parse_stated(raw, where: str, runtimes: bool = False) -> dict:
    """A ``quantization`` table -> the facts it states ({field: typed value}); ``runtimes``: it may hold
    per-runtime tables of the same keys (a recipe's)."""
    if not isinstance(raw, dict):
        raise _refuse(where, f"quantization = {raw!r} is not a table",
                      'write quantization = {weights = {bits = 8}, activations = "dynamic-per-tensor"}')
    allowed = (*SCHEME_KEYS, *(RUNTIME_KEYS if runtimes else ()))
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise _refuse(where, f"unknown quantization key {unknown[0]!r}", f"use only: {', '.join(allowed)}")
    stated = {}
    for k, v in raw.items():
        if k in ("weights", "table", "ffn"):
            stated[k] = parse_weights(v, where, k)
        elif k in ("activations", "head_activations"):
            if v not in ACTIVATIONS:
                raise _refuse(where, f"{k} = {v!r} is unknown", f"use one of: {', '.join(ACTIVATIONS)}")
            stated[k] = v
        else:  # a runtime's own facts
            stated[k] = parse_stated(v, f"{where}, quantization.{k}")
    return stated


# Short names a target may give instead of the table (the names ORT/LiteRT use for them); the same parser.
PRESETS = {
    "dynamic-per-channel": {"weights": {"bits": 8}, "activations": "dynamic-per-tensor"},
    "dynamic-per-tensor": {"weights": {"bits": 8, "block": "tensor"}, "activations": "dynamic-per-tensor"},
    "dynamic-int8": {"weights": {"bits": 8}, "activations": "dynamic-per-row"},
    "block-int4": {"weights": {"bits": 4, "block": 32}},
}


def parse_scheme(raw, where: str) -> QuantScheme:
    """A target artifact's ``quantization`` (a table or a PRESETS name) -> QuantScheme; the table follows the
    weights unless stated."""
    if isinstance(raw, str):
        if raw not in PRESETS:
            raise _refuse(where, f"unknown quantization {raw!r}",
                          f"write a table, e.g. quantization = {{weights = {{bits = 8}}}}, or one of: {', '.join(PRESETS)}")
        raw = PRESETS[raw]
    stated = parse_stated(raw, where)
    try:
        return scheme_of(stated)
    except EdgecompError as e:
        raise _refuse(where, e.problem, e.fix) from None


def scheme_of(stated: dict) -> QuantScheme:
    weights = stated.get("weights")
    return QuantScheme(weights=weights, table=stated.get("table", weights),
                       activations=stated.get("activations", "none"), ffn=stated.get("ffn"),
                       head_activations=stated.get("head_activations"))


def stated_to_json(stated: dict) -> dict:
    return {k: (v.to_json() if isinstance(v, WeightQuant) else stated_to_json(v) if isinstance(v, dict)
                else "none" if v is None else v) for k, v in stated.items()}


def resolve(default: QuantScheme | None, stated: dict, runtime: str,
            activations_for: Callable[[WeightQuant | None], str]) -> QuantScheme | None:
    """The scheme of one artifact: the target's default with what the recipe states (its runtime's own table
    last). Unstated: the table follows the weights; activations stay the target's while the weights do, else
    ``activations_for(weights)`` (the format's choice, e.g. the target's MatMulNBits accuracy level).
    A float (fp32 reference) artifact stays float: recipes quantize only what the target quantizes."""
    if default is None:
        return None
    stated = {**{k: v for k, v in stated.items() if k not in RUNTIME_KEYS}, **stated.get(runtime, {})}
    if not stated:
        return default
    weights = stated.get("weights", default.weights)
    table = stated.get("table", weights if "weights" in stated else default.table)
    activations = stated.get("activations") or (default.activations if weights == default.weights
                                                else activations_for(weights))
    return QuantScheme(weights, table, activations, ffn=stated.get("ffn", default.ffn),
                       head_activations=stated.get("head_activations", default.head_activations))


# --- what each format can store --------------------------------------------------------------------------
@dataclass(frozen=True)
class TrainView:
    """What distillation's fake quantization simulates: the weights and tables as the artifact stores them
    (grid resolved), the activation quantization, and whether the converter folds each LayerNorm's scale
    into the next Linear before quantizing (LiteRT does)."""

    weights: WeightQuant | None
    table: WeightQuant | None
    activations: str
    fold_layernorm: bool = False


class FormatQuant:
    """A format's quantization facts: its own grid/symmetry, what it can store (refused otherwise), the
    name its manifest record gives the scheme, and what distillation trains against for it."""

    runtime = ""
    grid: str | None = None
    symmetric: bool | None = True
    fold_layernorm = False

    def default_activations(self, weights: WeightQuant | None, options: dict) -> str:
        return "none"

    def check(self, scheme: QuantScheme) -> QuantScheme:
        """The scheme with this format's defaults filled in; refused if the format cannot store it."""
        return dataclasses.replace(scheme, **{k: getattr(scheme, k).with_defaults(self.grid, self.symmetric)
                                              for k in ("weights", "table", "ffn") if getattr(scheme, k)})

    def label(self, scheme: QuantScheme) -> str:
        return scheme.name

    def train_view(self, scheme: QuantScheme) -> TrainView:
        return TrainView(scheme.weights, scheme.table, scheme.activations, self.fold_layernorm)


def _cannot(fmt: str, scheme: QuantScheme, why: str, fix: str) -> EdgecompError:
    return EdgecompError(f"the {fmt} artifact cannot store quantization {scheme.name}: {why}", fix)


class OrtQuant(FormatQuant):
    """Encoder graphs quantized by ONNX Runtime's quantizers (edgecomp.optimize.quantize): int8 weights per
    channel or tensor with dynamic per-tensor activations (MatMulInteger), or 4-bit symmetric blocks
    (MatMulNBits / GatherBlockQuantized) on ORT's or LiteRT's grid, whose activations are int8 per row at
    MatMulNBits accuracy level 4 (a target's ``accuracy_level``)."""

    runtime = "onnxruntime"
    grid = "ort"

    def default_activations(self, weights, options):
        return "dynamic-per-row" if weights and weights.blocked and options.get("accuracy_level") == 4 else "none"

    def check(self, scheme):
        if scheme.head_activations:
            raise _cannot("ONNX", scheme, "head_activations is a causal-LM fact", "drop it for this model")
        # 2-bit blocks go asymmetric unless stated (a symmetric 2-bit grid has no +2: {-2, -1, 0, 1})
        two_bit = {k: dataclasses.replace(v, symmetric=False) for k in ("weights", "ffn")
                   if (v := getattr(scheme, k)) is not None and v.bits == 2 and v.symmetric is None}
        follows = scheme.table is not None and scheme.table == scheme.weights
        s = super().check(dataclasses.replace(scheme, **two_bit))
        w, t = s.weights, s.table
        if w is None:
            raise _cannot("ONNX", s, "the encoder quantizers start from quantized weights", "state weights")
        if w.blocked and (not w.rtn or w.bits != 4) and (follows or (t is not None and not t.rtn)):
            # GatherBlockQuantized stores 4-bit round-to-nearest rows only: the tables take the weights' blocks
            t = None if t is None else WeightQuant(4, w.block, grid="ort", symmetric=True)
            s = dataclasses.replace(s, table=t)
        if w.bits == 8:
            if w.blocked or not w.symmetric or w.planes != 1 or not w.rtn:
                raise _cannot("ONNX", s, "int8 weights are per channel or tensor, symmetric, rounded to nearest", 'use weights = {bits = 8}')
            if s.ffn:
                raise _cannot("ONNX", s, "ffn bits of their own need block weights (MatMulNBits)", "use weights = {bits = 4, block = 32}")
            if s.activations != "dynamic-per-tensor":
                raise _cannot("ONNX", s, "ORT's int8 MatMuls quantize activations per tensor",
                              'use activations = "dynamic-per-tensor"')
            if t is not None and t != w and not (t.bits == 4 and t.blocked and t.grid == "ort" and t.symmetric):
                raise _cannot("ONNX", s, "tables are as the int8 weights, or 4-bit symmetric blocks on ORT's grid",
                              "use table = {bits = 4, block = 32}, or leave table out")
            return s
        for kind, q in (("weights", w), ("ffn", s.ffn)):
            if q is None:
                continue
            if q.bits == 8:
                raise _cannot("ONNX", s, f"{kind}: 8-bit block weights are not shipped for encoders", "use bits = 4 or 2")
            if q.rtn and q.bits == 4 and (not q.symmetric or q.grid not in ("ort", "litert")):
                raise _cannot("ONNX", s, f"{kind}: round-to-nearest 4-bit weights are symmetric blocks on ORT's or LiteRT's grid",
                              'use {bits = 4, block = 32} (grid = "ort" or "litert"), or algorithm = "hqq"')
            if q.bits == 2 and q.grid not in (None, "ort"):
                raise _cannot("ONNX", s, f"{kind}: 2-bit weights are on ORT's grid", "drop grid")
        if s.ffn is not None and s.ffn.algorithm == "gptq" and w.algorithm != "gptq":
            raise _cannot("ONNX", s, "ORT's GPTQ quantizes every remaining MatMul of the graph at once, so the "
                          "feed-forward ones alone cannot take it", 'use algorithm = "gptq" in weights (and ffn), or another ffn algorithm')
        if s.activations == "dynamic-per-tensor":
            raise _cannot("ONNX", s, "MatMulNBits quantizes activations per row (or not)",
                          'use activations = "dynamic-per-row" or "none"')
        if t is not None and t != w and not (t.bits == 4 and t.blocked and t.rtn and t.symmetric and t.grid == (w.grid or "ort")):
            raise _cannot("ONNX", s, "the 4-bit tables are round-to-nearest symmetric blocks on the weights' grid",
                          "leave table out, or state it as {bits = 4, block = 32}")
        return s

    def label(self, scheme):
        w, t = scheme.weights, scheme.table
        if w.blocked and (w.bits != 4 or not w.rtn or scheme.ffn):
            return f"block-{w.name}" + (f"+ffn-{scheme.ffn.name}" if scheme.ffn else "")
        if w.bits == 4:
            return "block-int4"
        if t is not None and t.bits == 4:
            return "dynamic-per-channel-int4-tables"
        return f"dynamic-per-{w.block}"


class LiteRtQuant(FormatQuant):
    """Encoder .tflite through litert-torch's ai-edge-quantizer recipes (edgecomp.lower.tflite): the whole
    graph, tables included, int8 per channel or int4 in blocks of 32 on LiteRT's own grid, activations
    quantized per row at run time or not at all; the converter folds each LayerNorm's scale into the next
    weight before quantizing."""

    runtime = "litert"
    grid = "litert"
    fold_layernorm = True
    INT4_BLOCKS = (32,)  # litert-torch's encoder converter writes BLOCKWISE_32 (measured); other blocks refused

    def default_activations(self, weights, options):
        return "dynamic-per-row"

    def check(self, scheme):
        if any(q is not None and not q.rtn for q in (scheme.weights, scheme.table, scheme.ffn)):
            raise _cannot("TFLite", scheme, "LiteRT's converter rounds its weights to nearest (no GPTQ / HQQ / k-quant)",
                          'drop algorithm, or ship only ONNX (formats = ["onnx", "ort"])')
        s = super().check(scheme)
        w = s.weights
        if s.ffn or s.head_activations:
            raise _cannot("TFLite", s, "ffn and head_activations are causal-LM facts", "drop them for this model")
        if w is None or s.table != w:
            raise _cannot("TFLite", s, "LiteRT quantizes tables as the weights", 'leave table out, or ship only ONNX (formats = ["onnx", "ort"])')
        if s.activations == "dynamic-per-tensor":
            raise _cannot("TFLite", s, "LiteRT's dynamic range quantizes activations per row", 'use activations = "dynamic-per-row"')
        if w.bits == 8 and (w.block != "channel" or w.planes != 1):
            raise _cannot("TFLite", s, "int8 weights are per channel", "use weights = {bits = 8}")
        if w.bits == 4 and (w.block not in self.INT4_BLOCKS or w.grid != "litert"):
            raise _cannot("TFLite", s, f"the converter writes int4 blocks of {self.INT4_BLOCKS[0]} on its own grid",
                          f'use block = {self.INT4_BLOCKS[0]} (grid = "litert"), or formats without tflite')
        if w.bits == 2:
            raise _cannot("TFLite", s, "LiteRT has no 2-bit weights", "use bits = 8 or 4")
        if s.activations == "none":
            raise _cannot("TFLite", s, "the encoder converter quantizes activations dynamically", 'use activations = "dynamic-per-row"')
        return s

    def label(self, scheme):
        return "dynamic-int8" if scheme.weights.bits == 8 else "int4-block"


# format -> its quantization facts for encoder artifacts (the causal-LM plan has its own: edgecomp.llm.quantize)
FORMAT_QUANT: dict[str, FormatQuant] = {"onnx": OrtQuant(), "ort": OrtQuant(), "tflite": LiteRtQuant()}
