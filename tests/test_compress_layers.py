"""The replacement modules alone, over random factor shapes (hypothesis): the math equals the dense
weight they stand for, ONNX (the pipeline's module exporter + onnxslim, run by edgecomp.runtime) equals
PyTorch, the simplified graph keeps the factors as MatMul/Gather initializers, and (one fixed shape each)
the .tflite from the pipeline's LiteRT converter (edgecomp.lower.tflite, run through edgecomp.runtime.litert)
equals PyTorch. Tolerances: 1e-4 absolute (fp32 both sides; observed <= 3e-6)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from edgecomp.compress.layers import (FactorizedEmbedding, KroneckerEmbedding, KroneckerLinear, LowRankLinear,
                                      SharedDecoderLinear)
from edgecomp.lower.tflite import export_tflite
from edgecomp.runtime.litert import SignatureSession, open_compiled_model

from shipped import lower_module, run_module


pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATOL = 1e-4
SMALL = st.integers(1, 6)


def randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return module.eval()


def onnx_vs_torch(module, x, tmp_path) -> onnx.ModelProto:
    path = lower_module(module, x, tmp_path / "m.onnx")
    got = run_module(path, x.numpy())
    with torch.no_grad():
        want = module(x).numpy()
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= ATOL * max(1.0, np.abs(want).max())
    return onnx.load(str(path))


def matmul_weight_inputs(model: onnx.ModelProto) -> set[str]:
    inits = {i.name for i in model.graph.initializer}
    return {n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits}


@settings(max_examples=6, deadline=None)
@given(m1=SMALL, m2=SMALL, n1=SMALL, n2=SMALL, k=st.integers(1, 3), lead=st.lists(st.integers(1, 4), min_size=1, max_size=2),
       seed=st.integers(0, 999))
def test_kronecker_linear(tmp_path_factory, m1, m2, n1, n2, k, lead, seed):
    mod = randomize(KroneckerLinear(m1, m2, n1, n2, k), seed)
    x = torch.randn(*lead, n1 * n2)
    with torch.no_grad():
        assert torch.allclose(mod(x), x @ mod.dense_weight().T + mod.bias, atol=1e-4)
    a, b = mod.factors()  # pack/factors round trip
    ka, kb = KroneckerLinear.pack(a, b)
    assert torch.equal(ka, mod.kron_a) and torch.equal(kb, mod.kron_b)
    assert sum(p.numel() for p in mod.parameters()) == k * (m1 * n1 + m2 * n2) + m1 * m2
    g = onnx_vs_torch(mod, x, tmp_path_factory.mktemp("k"))
    assert len(matmul_weight_inputs(g)) == 2  # both factors stay quantizable MatMul weights


@settings(max_examples=6, deadline=None)
@given(n=st.integers(1, 40), m=st.integers(1, 40), r=st.integers(1, 8), lead=st.lists(st.integers(1, 4), min_size=1, max_size=2),
       seed=st.integers(0, 999))
def test_lowrank_linear(tmp_path_factory, n, m, r, lead, seed):
    mod = randomize(LowRankLinear(n, m, r), seed)
    x = torch.randn(*lead, n)
    with torch.no_grad():
        assert torch.allclose(mod(x), x @ mod.dense_weight().T + mod.bias, atol=1e-4)
    assert sum(p.numel() for p in mod.parameters()) == r * (n + m) + m
    g = onnx_vs_torch(mod, x, tmp_path_factory.mktemp("l"))
    assert len(matmul_weight_inputs(g)) == 2


@settings(max_examples=6, deadline=None)
@given(v=st.integers(2, 50), ell=st.integers(1, 8), d=st.integers(2, 24), bias=st.booleans(),
       shape=st.lists(st.integers(1, 5), min_size=1, max_size=2), seed=st.integers(0, 999))
def test_factorized_embedding(tmp_path_factory, v, ell, d, bias, shape, seed):
    mod = randomize(FactorizedEmbedding(v, ell, d, bias), seed)
    ids = torch.randint(0, v, shape)
    with torch.no_grad():
        assert torch.allclose(mod(ids), mod.dense_weight()[ids], atol=1e-4)
    assert sum(p.numel() for p in mod.parameters()) == v * ell + ell * d + (d if bias else 0)
    g = onnx_vs_torch(mod, ids, tmp_path_factory.mktemp("e"))
    assert "Gather" in {n.op_type for n in g.graph.node} and len(matmul_weight_inputs(g)) == 1


@settings(max_examples=6, deadline=None)
@given(v=st.integers(2, 50), d1=st.integers(1, 8), d2=st.integers(2, 8), k=st.integers(1, 3),
       shape=st.lists(st.integers(1, 5), min_size=1, max_size=2), seed=st.integers(0, 999))
def test_kronecker_embedding(tmp_path_factory, v, d1, d2, k, shape, seed):
    mod = randomize(KroneckerEmbedding(v, d1, d2, k), seed)
    ids = torch.randint(0, v, shape)
    with torch.no_grad():
        a = mod.kron_a.reshape(v, d1, k)
        dense = torch.stack([sum(torch.kron(a[i, :, t], mod.kron_b[t]) for t in range(k)) for i in range(v)])
        assert torch.allclose(mod(ids), dense[ids], atol=1e-4)
    assert sum(p.numel() for p in mod.parameters()) == v * d1 * k + k * d2
    onnx_vs_torch(mod, ids, tmp_path_factory.mktemp("ke"))


@settings(max_examples=4, deadline=None)
@given(n=st.integers(2, 24), m=st.integers(2, 24), ell=st.integers(1, 6), mode=st.sampled_from(["matmul", "decode"]),
       seed=st.integers(0, 999))
def test_shared_decoder_linear(tmp_path_factory, n, m, ell, mode, seed):
    g = torch.Generator().manual_seed(seed)
    dec = torch.nn.Parameter(torch.randn(n, ell + 1, generator=g))
    mod = SharedDecoderLinear(dec, torch.randn(m, ell, generator=g), torch.rand(m, generator=g) + 0.5,
                              torch.randn(m, generator=g), mode).eval()
    x = torch.randn(3, n)
    with torch.no_grad():
        assert torch.allclose(mod(x), x @ mod.dense_weight().T + mod.bias, atol=1e-4)
    onnx_vs_torch(mod, x, tmp_path_factory.mktemp("sd"))


LITERT_CASES = {
    "lowrank": (lambda: LowRankLinear(32, 16, 4), lambda: torch.randn(1, 5, 32)),
    "kronecker": (lambda: KroneckerLinear(4, 8, 8, 4, 3), lambda: torch.randn(1, 5, 32)),
    "svd/ae-embedding": (lambda: FactorizedEmbedding(100, 8, 32, True), lambda: torch.randint(0, 100, (1, 5))),
    "kron-embedding-1": (lambda: KroneckerEmbedding(100, 8, 4, 1), lambda: torch.randint(0, 100, (1, 5))),
    "kron-embedding-2": (lambda: KroneckerEmbedding(100, 8, 4, 2), lambda: torch.randint(0, 100, (1, 5))),
    "ae-weights": (lambda: SharedDecoderLinear(torch.nn.Parameter(torch.randn(32, 5)), torch.randn(16, 4),
                                               torch.rand(16) + 0.5, torch.randn(16), "matmul"),
                   lambda: torch.randn(1, 5, 32)),
}


@pytest.mark.parametrize("name", sorted(LITERT_CASES))
def test_litert_matches_pytorch(name, tmp_path):
    make, example = LITERT_CASES[name]
    torch.manual_seed(0)
    mod = randomize(make(), 0)
    x = example()
    info = export_tflite(mod, ["x"], ["y"], tmp_path / "m.tflite", [x.shape[1]], None, example_inputs=lambda n: {"x": x})
    session = SignatureSession(open_compiled_model(tmp_path / "m.tflite", threads=1))
    (signature,) = info["signatures"]
    dtype = np.dtype(session.input_details(signature)["x"]["dtype"])  # int64 ids arrive as int32
    got = session.run(signature, x=x.numpy().astype(dtype))["y"]
    with torch.no_grad():
        assert np.abs(got - mod(x).numpy()).max() <= ATOL
