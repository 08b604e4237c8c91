"""AdaptConfig: what `edgecomp adapt` trains, typed and checked before any work."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..archs.base import ROLES
from ..errors import EdgecompError

METHODS = ("lora-xs", "lora", "head-only", "full")
TASKS = ("classification", "sts")
DEFAULT_ROLES = ("query", "key", "value", "attention-output", "ffn-up", "ffn-down")
# what each method trains best with in a short CPU run: LoRA-XS's R sits between factors scaled by the
# singular values, so its updates are small per unit of step and it takes a larger rate than LoRA or a full
# fine-tune (which moves every weight)
DEFAULT_LR = {"lora-xs": 2e-3, "lora": 1e-3, "head-only": 1e-2, "full": 5e-5}
HEAD_LR = 1e-2  # the task head is trained from scratch in every method


@dataclass
class AdaptConfig:
    method: str = "lora-xs"
    rank: int = 8
    roles: tuple[str, ...] = DEFAULT_ROLES  # Linear roles that get adapters (archs/ adapters, never name globs)
    task: str = "classification"
    steps: int = 200
    lr: float | None = None  # None: DEFAULT_LR[method]
    head_lr: float = HEAD_LR
    batch: int = 16
    seed: int = 0
    max_length: int = 128
    alpha: float | None = None  # plain LoRA's scale numerator (None: 2 x rank)

    def __post_init__(self):
        if isinstance(self.roles, str):
            self.roles = tuple(r.strip() for r in self.roles.split(",") if r.strip())
        self.roles = tuple(self.roles)
        _check(self.method in METHODS, f"unknown adapter method {self.method!r}", f"use one of: {', '.join(METHODS)}")
        _check(self.task in TASKS, f"unknown adapter task {self.task!r}", f"use one of: {', '.join(TASKS)}")
        unknown = [r for r in self.roles if r not in ROLES]
        _check(not unknown, f"unknown Linear role(s) {', '.join(map(repr, unknown))}",
               f"use roles from: {', '.join(ROLES)}")
        _check(bool(self.roles) or not self.uses_modules, "no Linear roles given for the adapters",
               f"give roles, e.g. {','.join(DEFAULT_ROLES)}")
        _check(isinstance(self.rank, int) and self.rank >= 1, f"rank {self.rank} is not a positive integer",
               "use e.g. --rank 8")
        _check(isinstance(self.steps, int) and self.steps >= 0, f"steps {self.steps} is negative", "use e.g. --steps 200")
        _check(isinstance(self.batch, int) and self.batch >= 1, f"batch {self.batch} is not a positive number",
               "use e.g. --batch 16")
        _check(self.lr is None or self.lr > 0, f"learning rate {self.lr} is not positive", "use e.g. --lr 0.002")
        _check(self.max_length >= 2, f"max_length {self.max_length} leaves no room for a text", "use e.g. 128")

    @property
    def uses_modules(self) -> bool:
        """Whether the method puts adapters on the role Linears (head-only and full do not)."""
        return self.method in ("lora-xs", "lora")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def to_json(self) -> dict:
        d = asdict(self)
        d["roles"] = list(self.roles)
        d["lr"] = self.learning_rate
        return d


def _check(ok: bool, problem: str, fix: str) -> None:
    if not ok:
        raise EdgecompError(problem, fix)
