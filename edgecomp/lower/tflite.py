"""PyTorch -> one .tflite with a fixed-shape signature per sequence-length bucket (LiteRT / Android).

litert-torch traces fixed shapes; a single [1, 128] graph makes a 16-token sentence pay for 128, so we add
one signature `seq{L}` per bucket. The signatures share their weight buffers, so the file costs one copy
of the weights. Signature inputs/outputs carry the Optimum names (`input_ids` ... -> `last_hidden_state`):
litert-torch names inputs after the sample kwargs and outputs after the keys of a returned dict.
litert-torch downcasts int64 inputs to int32, so the runner feeds int32.

The weights are shared between signatures, but each signature's subgraph carries its own tensor table:
per-channel quantization parameters (a float32 scale and an int64 zero point per channel: 615 kB for
MiniLM, half of it the 30522-row embedding table) and long module-path tensor names (220 kB). With four
buckets that is +3.3 MB on a 22.8 MB int8 model, so `_share_tensor_tables` rewrites the flatbuffer with
identical quantization tables stored once (FlatBuffers lets several tensors point at one table) and short
tensor names; measured on MiniLM int8: 26.3 MB -> 23.6 MB, outputs bit-identical.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import EdgecompError
from ..quant import QuantScheme


def _quant_config(scheme: QuantScheme | None):
    """The ai-edge-quantizer recipe that stores ``scheme`` (checked by edgecomp.quant.LiteRtQuant), applied to
    the whole graph: int8 weights per output channel or int4 in blocks along the input dimension, activations
    quantized on the fly (dynamic range, per row). The embedding table is quantized too, which is most of a
    small encoder's bytes."""
    if scheme is None:
        return None
    from litert_torch.generative.quantize import quant_attrs, quant_recipes

    from ..quant import FORMAT_QUANT

    w = FORMAT_QUANT["tflite"].check(scheme).weights
    granularity = quant_attrs.Granularity.CHANNELWISE if w.block == "channel" else \
        getattr(quant_attrs.Granularity, f"BLOCKWISE_{w.block}")
    return quant_recipes.full_dynamic_recipe(weight_dtype=getattr(quant_attrs.Dtype, f"INT{w.bits}"), granularity=granularity)


@contextlib.contextmanager
def quiet_converter():
    """litert-torch prints a progress line per stage, warns about the int64->int32 input downcast we
    rely on, and ai-edge-quantizer prints tqdm bars and size summaries: keep the export output readable."""
    old_progress = os.environ.get("LITERT_TORCH_SHOW_PROGRESS")
    os.environ["LITERT_TORCH_SHOW_PROGRESS"] = "n"
    old_disable = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(old_disable)
        if old_progress is None:
            os.environ.pop("LITERT_TORCH_SHOW_PROGRESS", None)
        else:
            os.environ["LITERT_TORCH_SHOW_PROGRESS"] = old_progress


def _named_io(module, input_names: list[str], output_names: list[str]):
    import torch

    class NamedIO(torch.nn.Module):
        """Takes the inputs by name and returns a dict, so the signatures carry Optimum names."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, **feeds):
            out = self.inner(*(feeds[n] for n in input_names))
            if isinstance(out, torch.Tensor):
                out = (out,)
            if len(out) != len(output_names):
                raise ValueError(f"module returned {len(out)} outputs, expected {len(output_names)} ({output_names})")
            return dict(zip(output_names, out))

    return NamedIO(module).eval()


def _round16(n: int) -> int:
    return (n + 15) & ~15


def _share_tensor_tables(model_bytes: bytes) -> bytearray:
    """Store each distinct quantization table once across signatures, shorten tensor names.

    Weight buffers of >= 1 kB go after the flatbuffer at 16-byte aligned offsets, the layout
    ai-edge-quantizer writes (re-packing them inline through the Python object API is byte-by-byte slow).
    """
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    class SharedQuantization(schema.QuantizationParametersT):
        offset = None

        def Pack(self, builder):  # noqa: N802 (flatbuffers API name)
            if self.offset is None:  # packed once, then every tensor using it points at the same table
                self.offset = super().Pack(builder)
            return self.offset

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    shared: dict[tuple, SharedQuantization] = {}
    for subgraph in model.subgraphs:
        for i, tensor in enumerate(subgraph.tensors):
            tensor.name = f"t{i}".encode()  # the runtime addresses tensors by index; signatures keep their names
            q = tensor.quantization
            if q is None or q.scale is None or q.detailsType:  # details may hold subgraph-local indices
                continue
            key = tuple(None if a is None else np.asarray(a).tobytes() for a in (q.scale, q.zeroPoint, q.min, q.max))
            key += (q.quantizedDimension,)
            if key not in shared:
                shared[key] = SharedQuantization()
                shared[key].__dict__.update(q.__dict__)
            tensor.quantization = shared[key]

    external = {}
    for i, buffer in enumerate(model.buffers):
        if buffer.data is not None and len(buffer.data) >= 1024:
            external[i] = np.ravel(np.asarray(buffer.data)).view(np.uint8)
            buffer.data, buffer.offset, buffer.size = None, 1, 1  # reserve the fields, patched below
    head = flatbuffer_utils.convert_object_to_bytearray(model)
    offsets, end = {}, _round16(len(head))
    for i, data in external.items():
        offsets[i], end = end, _round16(end + data.nbytes)
    out = bytearray(end)
    out[: len(head)] = head
    packed = schema.Model.GetRootAs(out, 0)
    for i, data in external.items():
        flatbuffer_utils.update_packed_buffer(packed.Buffers(i), offset=offsets[i], size=data.nbytes)
        out[offsets[i]: offsets[i] + data.nbytes] = data.tobytes()
    return out


def export_tflite(
    module,
    input_names: list[str],
    output_names: list[str],
    out_path: Path,
    seq_buckets: Sequence[int],
    scheme: QuantScheme | None,
    batch: int = 1,
    example_inputs=None,
    extra_inputs: dict | None = None,
) -> dict:
    """Convert `module(*int64 [batch, L] tensors in input_names order)` to one .tflite at `out_path`.

    `example_inputs(length) -> {name: tensor}` replaces the default all-ones token rows, for modules that
    take other inputs (early-exit stages take float hidden states). `extra_inputs` are inputs of every
    signature whose shape does not follow the bucket (the adapter slots, edgecomp/adapt/litert.py): the names
    at the end of `input_names`, each traced with the example tensor given.

    Returns {"signatures", "seq_buckets", "quantization", "size_bytes", "inputs", "outputs", "convert_s"}.
    """
    from ..quant import FORMAT_QUANT

    try:
        import litert_torch
        import torch
    except ImportError:
        raise EdgecompError("the android converter litert-torch is not installed",
                            'run `pip install -e ".[android]"`') from None
    buckets = sorted({int(b) for b in seq_buckets})
    if not buckets or buckets[0] < 1:
        raise EdgecompError(f"invalid TFLite sequence buckets {list(seq_buckets)}",
                            "set seq_buckets to positive lengths, e.g. [16, 32, 64, 128]")
    quant_config = _quant_config(scheme)
    out_path = Path(out_path)
    wrapped = _named_io(module, list(input_names), list(output_names))

    extra_inputs = dict(extra_inputs or {})
    token_names = [n for n in input_names if n not in extra_inputs]

    def default_example(length: int) -> dict:
        # all-ones ids/mask: a real, unpadded row; token_type_ids must stay within the type vocabulary
        return {n: (torch.zeros if n == "token_type_ids" else torch.ones)(batch, length, dtype=torch.long)
                for n in token_names}

    tokens_example = example_inputs or default_example

    def example(length: int) -> dict:
        return {**tokens_example(length), **extra_inputs}

    start = time.perf_counter()
    tmp = out_path.with_name(f".{out_path.name}.tmp-{os.getpid()}")
    try:
        with quiet_converter():
            converter = None
            for length in buckets:
                add = litert_torch.signature if converter is None else converter.signature
                converter = add(f"seq{length}", wrapped, sample_kwargs=example(length))
            edge_model = converter.convert(quant_config=quant_config)
            tmp.write_bytes(_share_tensor_tables(edge_model.model_content()))
        os.replace(tmp, out_path)
    except EdgecompError:
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise EdgecompError(
            f"litert-torch could not convert the model to TFLite ({first})",
            "use a target without a .tflite artifact for this model, or export a supported architecture",
        ) from e
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "signatures": [f"seq{b}" for b in buckets],
        "seq_buckets": buckets,
        "quantization": FORMAT_QUANT["tflite"].label(scheme) if scheme else "none",
        "size_bytes": out_path.stat().st_size,
        "inputs": list(input_names),
        "outputs": list(output_names),
        "convert_s": round(time.perf_counter() - start, 2),
    }
