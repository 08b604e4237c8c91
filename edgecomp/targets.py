"""Target profiles: data files in edgecomp/data/targets/*.toml. Adding a target is adding a file."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EdgecompError
from .paths import targets_dir
from .quant import QuantScheme, parse_scheme

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FORMATS = ("onnx", "ort", "tflite")
RUNTIMES = {"onnx": "onnxruntime", "ort": "onnxruntime", "tflite": "litert"}


@dataclass(frozen=True)
class ArtifactSpec:
    """One file a target wants: its format, runtime and quantization scheme (None: fp32)."""

    name: str
    format: str
    runtime: str
    scheme: QuantScheme | None = None
    primary: bool = False
    source: str | None = None  # "onnx": derived from the onnx artifact of the same precision
    seq_buckets: tuple[int, ...] = ()
    options: dict = field(default_factory=dict)

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.format}"

    @property
    def precision(self) -> str:
        """fp32 | int8 | int4 | int8+int4-tables: follows from the scheme (the manifest's short name)."""
        return self.scheme.precision if self.scheme else "fp32"

    @property
    def quantization(self) -> str | None:
        """The scheme's name in this format's terms (e.g. dynamic-per-channel, int4-block), for the manifest."""
        from .quant import FORMAT_QUANT

        return FORMAT_QUANT[self.format].label(self.scheme) if self.scheme else None


@dataclass(frozen=True)
class BenchSpec:
    batch: int = 1
    seq_len: int = 128
    threads: tuple[int, ...] = (1, 2)
    warmup: int = 5
    runs: int = 30


@dataclass(frozen=True)
class Tolerance:
    cos_mean: float = 0.99  # embedding cosine vs PyTorch fp32 (encoders)
    cos_min: float = 0.95
    nll_ratio_max: float = 1.2  # causal LMs: artifact NLL / PyTorch fp32 NLL on the verification text


@dataclass(frozen=True)
class TargetSpec:
    name: str
    description: str
    opset: int
    artifacts: tuple[ArtifactSpec, ...]
    tolerance: Tolerance
    bench: BenchSpec
    emulated_cpu: str | None = None
    checks: tuple[str, ...] = ()  # device checks per artifact (edgecomp.bench.checks)
    path: Path | None = None  # the target file, absolute

    @property
    def primary(self) -> ArtifactSpec:
        for a in self.artifacts:
            if a.primary:
                return a
        return self.artifacts[-1]

    def runtimes(self) -> set[str]:
        return {a.runtime for a in self.artifacts}

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "description": self.description,
            "opset": self.opset,
            "formats": [a.format for a in self.artifacts],
            "runtimes": sorted(self.runtimes()),
            "tolerance": vars(self.tolerance),
            "bench": {**vars(self.bench), "threads": list(self.bench.threads)},
            "emulated_cpu": self.emulated_cpu,
            "checks": list(self.checks),
            "file": str(self.path) if self.path else None,
        }


def _parse(path: Path) -> TargetSpec:
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise EdgecompError(f"target file {path} cannot be read ({e})", "fix the TOML syntax") from None
    arts = []
    for a in raw.get("artifacts", []):
        fmt = a.get("format")
        if fmt not in FORMATS:
            raise EdgecompError(f"target {path.name}: unknown artifact format {fmt!r}", f"use one of {FORMATS}")
        known = {"name", "format", "runtime", "precision", "quantization", "primary", "from", "seq_buckets"}
        where = f"target {path.name}, artifact {a.get('name', 'model')}.{fmt}"
        stale = next((k for k in ("block_size", "grid") if k in a), None)
        if stale:  # read by nothing now: the block and grid are the scheme's
            raise EdgecompError(f"{where}: {stale} is no artifact option",
                                "state it in quantization = {weights = {bits = 4, block = 32, grid = \"ort\"}}")
        scheme = parse_scheme(a["quantization"], where) if a.get("quantization") is not None else None
        precision = scheme.precision if scheme else "fp32"
        if a.get("precision", precision) != precision:  # a target may still say it; once, consistently
            raise EdgecompError(f"{where}: precision = {a['precision']!r} contradicts its quantization ({precision})",
                                "drop precision: it follows from quantization")
        arts.append(
            ArtifactSpec(
                name=a.get("name", "model"),
                format=fmt,
                runtime=a.get("runtime", RUNTIMES[fmt]),
                scheme=scheme,
                primary=bool(a.get("primary", False)),
                source=a.get("from"),
                seq_buckets=tuple(a.get("seq_buckets", ())),
                options={k: v for k, v in a.items() if k not in known},
            )
        )
    if not arts:
        raise EdgecompError(f"target {path.name} lists no [[artifacts]]", "add at least one [[artifacts]] table")
    b = raw.get("bench", {})
    return TargetSpec(
        name=raw.get("name", path.stem),
        description=raw.get("description", ""),
        opset=int(raw.get("opset", 17)),
        artifacts=tuple(arts),
        tolerance=Tolerance(**raw.get("tolerance", {})),
        bench=BenchSpec(
            batch=b.get("batch", 1),
            seq_len=b.get("seq_len", 128),
            threads=tuple(b.get("threads", (1, 2))),
            warmup=b.get("warmup", 5),
            runs=b.get("runs", 30),
        ),
        emulated_cpu=raw.get("emulated_cpu"),
        checks=tuple(raw.get("checks", ())),
        path=path,
    )


def list_targets() -> list[TargetSpec]:
    return [_parse(p) for p in sorted(targets_dir().glob("*.toml"))]


def load_target(name_or_path: str) -> TargetSpec:
    p = Path(name_or_path)
    if p.suffix == ".toml" and p.exists():
        return _parse(p.resolve())  # absolute: the manifest records it for `edgecomp bench` from any folder
    cand = targets_dir() / f"{name_or_path}.toml"
    if cand.exists():
        return _parse(cand)
    known = ", ".join(t.name for t in list_targets()) or "none found"
    raise EdgecompError(
        f"unknown target {name_or_path!r}",
        f"use one of: {known} (see `edgecomp targets`), or pass a path to a target .toml",
    )
