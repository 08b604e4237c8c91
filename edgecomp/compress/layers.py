"""The replacement modules the methods put into the model.

Rules every forward here follows, because the pipeline exports with torch.onnx / optimum (opset 17) and
litert-torch, then quantizes with ORT `quantize_dynamic` (MatMulInteger) and `MatMulNBits`:
- only MatMul / Gather / Reshape / Transpose / Mul / Add (no einsum, no kron, no dynamic loops);
- every weight is the *right-hand, 2-D* input of a MatMul (or the table of a Gather), stored as [in, out],
  so it is an initializer the quantizers recognise (a left-hand or 3-D constant is left in fp32 by them);
- parameter names (`lowrank_u`, `kron_a`, ...) sit under the replaced module's path, so the pipeline's
  size breakdown still classifies the initializers by the original module name.
"""

from __future__ import annotations

import torch
from torch import nn


class LowRankLinear(nn.Module):
    """y = (x @ V) @ U + bias: a rank-r pair replacing an nn.Linear (two MatMuls in the graph)."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.lowrank_v = nn.Parameter(torch.zeros(in_features, rank))
        self.lowrank_u = nn.Parameter(torch.zeros(rank, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x):
        y = torch.matmul(torch.matmul(x, self.lowrank_v), self.lowrank_u)
        return y + self.bias if self.bias is not None else y

    def dense_weight(self) -> torch.Tensor:  # [out, in], like nn.Linear.weight
        return (self.lowrank_v @ self.lowrank_u).T

    def extra_repr(self):
        return f"in={self.in_features}, out={self.out_features}, rank={self.rank}"


class KroneckerLinear(nn.Module):
    """y = W x with W = sum_k A_k (m1 x n1) kron B_k (m2 x n2), never materialised.

    Row-major: x -> X [n1, n2]; Z = X @ Bcat with Bcat[j2, (k,i2)] = B_k[i2, j2]  -> [n1, k, m2];
    permute to [m2, (k, j1)] and multiply by Acat[(k, j1), i1] = A_k[i1, j1] -> [m2, m1]; the sum over
    the k terms happens inside that MatMul (no ReduceSum). Transpose to [m1, m2] and flatten.
    Both weights are 2-D right-hand MatMul inputs, so ORT's int8/int4 quantizers take them.
    """

    def __init__(self, m1: int, m2: int, n1: int, n2: int, terms: int, bias: bool = True):
        super().__init__()
        self.m1, self.m2, self.n1, self.n2, self.terms = m1, m2, n1, n2, terms
        self.in_features, self.out_features = n1 * n2, m1 * m2
        self.kron_b = nn.Parameter(torch.zeros(n2, terms * m2))
        self.kron_a = nn.Parameter(torch.zeros(terms * n1, m1))
        self.bias = nn.Parameter(torch.zeros(m1 * m2)) if bias else None

    @staticmethod
    def pack(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A [k, m1, n1], B [k, m2, n2] -> (kron_a [k*n1, m1], kron_b [n2, k*m2])."""
        k, m1, n1 = a.shape
        _, m2, n2 = b.shape
        return a.transpose(1, 2).reshape(k * n1, m1), b.permute(2, 0, 1).reshape(n2, k * m2)

    def factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.terms
        a = self.kron_a.reshape(k, self.n1, self.m1).transpose(1, 2)
        b = self.kron_b.reshape(self.n2, k, self.m2).permute(1, 2, 0)
        return a, b

    def forward(self, x):
        lead = x.shape[:-1]
        z = torch.matmul(x.reshape(*lead, self.n1, self.n2), self.kron_b)          # [.., n1, k*m2]
        z = z.reshape(*lead, self.n1, self.terms, self.m2)
        nd = z.dim()
        z = z.permute(*range(nd - 3), nd - 1, nd - 2, nd - 3)                      # [.., m2, k, n1]
        y = torch.matmul(z.reshape(*lead, self.m2, self.terms * self.n1), self.kron_a)  # [.., m2, m1]
        y = y.transpose(-1, -2).reshape(*lead, self.out_features)
        return y + self.bias if self.bias is not None else y

    def dense_weight(self) -> torch.Tensor:
        a, b = self.factors()
        w = (a[:, :, None, :, None] * b[:, None, :, None, :]).sum(0)  # W[(i1,i2),(j1,j2)] = sum A[i1,j1] B[i2,j2]
        return w.reshape(self.out_features, self.in_features)

    def extra_repr(self):
        return f"A={self.m1}x{self.n1}, B={self.m2}x{self.n2}, terms={self.terms}"


class FactorizedEmbedding(nn.Module):
    """Token table E ~ Z @ D (+ bias): Gather on the small table Z [V, l], then MatMul by D [l, d] (+ Add).

    SVD stores Z = U_l S_l and D = V_l^T (no bias); the direction-loss autoencoder stores Z = enc(E) and
    its decoder (with bias).
    """

    def __init__(self, num_embeddings: int, latent_dim: int, embedding_dim: int, bias: bool,
                 padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.latent_dim, self.embedding_dim = num_embeddings, latent_dim, embedding_dim
        self.padding_idx = padding_idx
        self.latent = nn.Parameter(torch.zeros(num_embeddings, latent_dim))
        self.decoder = nn.Parameter(torch.zeros(latent_dim, embedding_dim))
        self.decoder_bias = nn.Parameter(torch.zeros(embedding_dim)) if bias else None

    def forward(self, input_ids):
        y = torch.matmul(nn.functional.embedding(input_ids, self.latent), self.decoder)
        return y + self.decoder_bias if self.decoder_bias is not None else y

    def dense_weight(self) -> torch.Tensor:
        w = self.latent @ self.decoder
        return w + self.decoder_bias if self.decoder_bias is not None else w

    def extra_repr(self):
        return f"{self.num_embeddings}x{self.latent_dim} -> {self.embedding_dim}, bias={self.decoder_bias is not None}"


class KroneckerEmbedding(nn.Module):
    """row_i = sum_k a_{i,k} kron b_k, with a_{i,k} in R^{d1} per token and b_k in R^{d2} shared.

    One term: Gather [.., d1] -> Reshape [.., d1, 1] -> Mul b [1, d2] -> Reshape [.., d].
    k terms: Gather [.., d1*k] -> Reshape [.., d1, k] -> MatMul b [k, d2] (the sum over terms) -> Reshape.
    """

    def __init__(self, num_embeddings: int, d1: int, d2: int, terms: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.d1, self.d2, self.terms = num_embeddings, d1, d2, terms
        self.embedding_dim = d1 * d2
        self.padding_idx = padding_idx
        self.kron_a = nn.Parameter(torch.zeros(num_embeddings, d1 * terms))
        self.kron_b = nn.Parameter(torch.zeros(terms, d2))

    def forward(self, input_ids):
        g = nn.functional.embedding(input_ids, self.kron_a)
        lead = g.shape[:-1]
        g = g.reshape(*lead, self.d1, self.terms)
        y = g * self.kron_b if self.terms == 1 else torch.matmul(g, self.kron_b)
        return y.reshape(*lead, self.embedding_dim)

    def dense_weight(self) -> torch.Tensor:
        return (self.kron_a.reshape(-1, self.d1, self.terms) @ self.kron_b).reshape(-1, self.embedding_dim)

    def extra_repr(self):
        return f"{self.num_embeddings}x{self.d1} kron {self.d2}, terms={self.terms}"


class TiedOutputHead(nn.Module):
    """An LM head tied to a compressed token table: logits = h @ E^T computed from the same factors.

    Keeps one table in the artifact (tying preserved) instead of re-densifying E for the head.
    """

    def __init__(self, table: nn.Module, bias: torch.Tensor | None):
        super().__init__()
        self.table = table  # the same module object as the input embedding: its parameters are shared
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, h):
        t = self.table
        lead = h.shape[:-1]
        h2 = h.reshape(-1, h.shape[-1])
        bias = self.bias if self.bias is not None else h.new_zeros(t.num_embeddings)
        if isinstance(t, FactorizedEmbedding):
            # 2-D F.linear *with a bias* exports as Gemm(transB=1) reading the table itself; `h @ latent.T`
            # exports a Transpose that constant folding turns into a second, transposed table.
            z = nn.functional.linear(h2, t.decoder, h.new_zeros(t.latent_dim))
            y = nn.functional.linear(z, t.latent, bias)
            if t.decoder_bias is not None:  # the decoder bias's share of every logit: h . b
                y = y + nn.functional.linear(h2, t.decoder_bias.unsqueeze(0), h.new_zeros(1))
        else:  # any table with a dense_weight(); correct but dense
            y = nn.functional.linear(h2, t.dense_weight(), bias)
        return y.reshape(*lead, y.shape[-1])


class SharedDecoderLinear(nn.Module):
    """A Linear whose weight rows are decoded from per-layer latents by a decoder shared across layers.

    Row i of W is  g_i * (z_i @ D + b)  (direction from the shared linear decoder, norm g_i kept per row,
    folded into the scale). Two lowerings:
    - `mode="matmul"` (b, runtime memory gain): y = ((x @ [D^T | b]) @ [Z | 1]^T_scaled) + bias; the
      decoder stays a MatMul shared by every layer of this module type, nothing dense appears.
    - `mode="decode"` (a, storage gain only): W is rebuilt from (Z, D, b, g) at the start of the graph;
      a runtime folds it once at load time (so it holds the dense W), the file stores only Z and D.
    """

    def __init__(self, decoder_t: nn.Parameter, latent: torch.Tensor, row_scale: torch.Tensor,
                 bias: torch.Tensor | None, mode: str):
        super().__init__()
        self.mode = mode
        self.ae_decoder_t = decoder_t  # [in, l+1]: D^T with the decoder bias as the last column (shared)
        self.in_features, self.out_features = decoder_t.shape[0], latent.shape[0]
        if mode == "matmul":
            z1 = torch.cat([latent, torch.ones(latent.shape[0], 1)], 1) * row_scale[:, None]
            self.ae_latent_t = nn.Parameter(z1.T.contiguous())  # [l+1, out]
        else:
            self.ae_latent = nn.Parameter(latent.clone())  # [out, l]
            self.ae_row_scale = nn.Parameter(row_scale.clone())  # [out]
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def dense_weight(self) -> torch.Tensor:  # [out, in]
        if self.mode == "matmul":
            return (self.ae_decoder_t @ self.ae_latent_t).T
        d = self.ae_decoder_t
        return (self.ae_latent @ d[:, :-1].T + d[:, -1]) * self.ae_row_scale[:, None]

    def forward(self, x):
        if self.mode == "matmul":
            y = torch.matmul(torch.matmul(x, self.ae_decoder_t), self.ae_latent_t)
        else:
            d = self.ae_decoder_t
            w_t = (torch.matmul(d[:, :-1], self.ae_latent.T) + d[:, -1:]) * self.ae_row_scale  # [in, out]
            y = torch.matmul(x, w_t)
        return y + self.bias if self.bias is not None else y


class SmoothedLinear(nn.Linear):
    """y = (x * input_scale) @ W'^T + b with W' = W diag(1/input_scale): the same function as the Linear it
    replaces, with the activation's outlier channels scaled down before the runtime quantizes them (and the
    weight's matching columns scaled up). Lowers to Mul + MatMul + Add; the Mul is one multiply per input
    feature and token, against the MatMul's in x out. `input_scale` is a child module so the int8-aware
    distillation can quantize what the MatMul actually receives (its output), and so Linears reading one
    tensor can share it."""

    def __init__(self, linear: nn.Linear, scale: torch.Tensor):
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            self.weight.copy_(linear.weight / scale)  # [out, in]: column j divided by s_j
            if linear.bias is not None:
                self.bias.copy_(linear.bias)
        self.input_scale = ChannelScale(scale)

    def forward(self, x):
        return nn.functional.linear(self.input_scale(x), self.weight, self.bias)


class ChannelScale(nn.Module):
    """x * scale along the last axis (one Mul with a constant vector)."""

    def __init__(self, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale.detach().clone().float())

    def forward(self, x):
        return x * self.scale


class FrequencySplitEmbedding(nn.Module):
    """A token table split by token frequency: one Gather of an index remap, then the frequent rows from
    ``frequent`` (a float nn.Embedding the export's scheme quantizes like any table, e.g. 4-bit
    GatherBlockQuantized) and, for the rest, either 2-bit codes or nothing (the remap sends them to a kept row).

    remap[token] < n_frequent: the row of ``frequent``; >= n_frequent: row ``remap - n_frequent`` of the
    2-bit rare table. The 2-bit rows are stored as uint8 bytes of four codes, with float16 scale and minimum
    per block; they dequantize with standard ops only (a Gather of the codes, a Gather of a 256 x 4 lookup
    of each byte's four codes, Mul, Add), so ONNX Runtime and LiteRT run them without a custom kernel and the
    quantizers leave them alone (no float table to match).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, n_frequent: int, n_rare: int = 0,
                 rare_block: int = 32, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.n_frequent, self.n_rare, self.rare_block = n_frequent, n_rare, rare_block
        self.register_buffer("remap", torch.zeros(num_embeddings, dtype=torch.int32))
        self.frequent = nn.Embedding(n_frequent, embedding_dim, padding_idx=padding_idx)
        if n_rare:
            nb = embedding_dim // rare_block
            self.register_buffer("rare_codes", torch.zeros(n_rare, embedding_dim // 4, dtype=torch.uint8))
            self.register_buffer("rare_scale", torch.zeros(n_rare, nb, dtype=torch.float16))
            self.register_buffer("rare_min", torch.zeros(n_rare, nb, dtype=torch.float16))
            byte = torch.arange(256)
            self.register_buffer("rare_lut", torch.stack([(byte >> s) & 3 for s in (0, 2, 4, 6)], -1).float())

    @property
    def weight(self) -> torch.Tensor:  # what a reader of nn.Embedding.weight gets: the table as it decodes
        return self.dense_weight()

    def _rare_rows(self, rows: torch.Tensor) -> torch.Tensor:
        codes = self.rare_lut[self.rare_codes[rows].long()]  # [..., D/4, 4] code values 0..3
        lead = rows.shape
        nb = self.embedding_dim // self.rare_block
        q = codes.reshape(*lead, nb, self.rare_block)
        x = q * self.rare_scale[rows].float().unsqueeze(-1) + self.rare_min[rows].float().unsqueeze(-1)
        return x.reshape(*lead, self.embedding_dim)

    def forward(self, input_ids):
        row = self.remap[input_ids].long()
        if not self.n_rare:
            return self.frequent(row)
        f = self.frequent(row.clamp(max=self.n_frequent - 1))
        r = self._rare_rows((row - self.n_frequent).clamp(min=0))
        return torch.where((row >= self.n_frequent).unsqueeze(-1), r, f)

    def dense_weight(self) -> torch.Tensor:
        return self.forward(torch.arange(self.num_embeddings, device=self.remap.device))

    def extra_repr(self):
        return (f"{self.num_embeddings}, {self.embedding_dim}, frequent={self.n_frequent}, "
                f"rare={self.n_rare} (2-bit, blocks of {self.rare_block})")
