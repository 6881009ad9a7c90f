"""The Selfie transformer ("attention pooling") of Chen et al. (CVPR 2020), used for Selfie pretraining.

Selfie (Trinh et al., 2019, "Selfie: Self-supervised Pretraining for Image Embedding") masks some
patches of an image and asks the network which of the held-out patches belongs in each masked
slot. Chen et al. encode every patch with the ResNet trunk (stem + layer1-3, pooled), feed the
*visible* patch features through a stack of post-LN transformer encoder layers with a learned
summary token ``u0`` prepended, and add row/column position embeddings of the masked slots to the
summary output to build one query per slot (official code ``TAMU-VITA/Adv-SS-Pretraining``,
``pretraining/attention_pooling/*``, ``SelfieModel``).

As coded: 13 encoder layers (``n_layers=12`` + 1), 16 heads of d_k = d_v = 64, d_model 1024 (the
ResNet-50v2 layer3 width), d_ff 2048, dropout 0.1, GELU (tanh), post-LN, no positional encoding on
the visible tokens, ``u0`` and ``column_embeddings`` initialised to zeros, ``row_embeddings`` to
N(0, 1); 109,207,552 parameters. All sizes are arguments so tiny widths work in tests.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SelfieTransformer", "EncoderLayer"]


class EncoderLayer(nn.Module):
    """Post-LN encoder layer: multi-head self-attention then a position-wise FFN, each ``LN(x + f(x))``.

    The FFN's two ``Conv1d(k=1)`` of the official code are :class:`~torch.nn.Linear` here (the same
    map and parameter count, without the transposes).
    """

    def __init__(self, d_model: int, n_heads: int, d_k: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.d_k, self.dropout = n_heads, d_k, dropout
        self.w_qs = nn.Linear(d_model, n_heads * d_k)
        self.w_ks = nn.Linear(d_model, n_heads * d_k)
        self.w_vs = nn.Linear(d_model, n_heads * d_k)
        self.fc = nn.Linear(n_heads * d_k, d_model)
        self.ln_attn = nn.LayerNorm(d_model)
        self.w_1 = nn.Linear(d_model, d_ff)
        self.w_2 = nn.Linear(d_ff, d_model)
        self.ln_ffn = nn.LayerNorm(d_model)
        # The attention-is-all-you-need-pytorch initialisation that the official code inherits.
        std = math.sqrt(2.0 / (d_model + d_k))
        for w in (self.w_qs, self.w_ks, self.w_vs):
            nn.init.normal_(w.weight, mean=0.0, std=std)
        nn.init.xavier_normal_(self.fc.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        heads = lambda t: t.view(b, n, self.n_heads, self.d_k).transpose(1, 2)  # noqa: E731  (B, h, N, d_k)
        q, k, v = heads(self.w_qs(x)), heads(self.w_ks(x)), heads(self.w_vs(x))
        drop = self.dropout if self.training else 0.0
        # Written out rather than F.scaled_dot_product_attention: the fused kernels have no double
        # backward, which the ensemble's gradient penalty needs; on 13 tokens the math path is cheap.
        # Scale 1/sqrt(d_k) as in the paper's ScaledDotProductAttention (temperature d_k ** 0.5).
        w = F.dropout(torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.d_k), dim=-1), drop, self.training)
        att = w @ v  # (B, h, N, d_k)
        att = att.transpose(1, 2).reshape(b, n, self.n_heads * self.d_k)
        x = self.ln_attn(F.dropout(self.fc(att), drop, self.training) + x)
        ffn = self.w_2(F.gelu(self.w_1(x), approximate="tanh"))
        return self.ln_ffn(F.dropout(ffn, drop, self.training) + x)


class SelfieTransformer(nn.Module):
    """Summary-token transformer over visible patch features; one query per masked position.

    Args:
        d_model: token width; the paper uses the patch encoder's output width (1024 for
            ResNet-50v2 layer3).
        n_layers: encoder layers (13 in the paper: ``SelfieModel(n_layers=12)`` builds ``n_layers + 1``).
        n_heads: attention heads (16).
        d_ff: FFN hidden width (2048 = 2 * d_model in the paper); 0 means ``2 * d_model``.
        dropout: dropout in attention, after the attention projection and after the FFN (0.1).
        grid: patches per side (4: a 4x4 grid, 16 positions).
        d_k: per-head width; 0 means ``max(1, d_model // n_heads)`` (64 in the paper).
    """

    def __init__(
        self,
        d_model: int = 1024,
        n_layers: int = 13,
        n_heads: int = 16,
        d_ff: int = 0,
        dropout: float = 0.1,
        grid: int = 4,
        d_k: int = 0,
    ) -> None:
        super().__init__()
        if d_model < 1 or n_layers < 1 or n_heads < 1 or grid < 1:
            raise ValueError(f"invalid Selfie transformer sizes d_model={d_model} n_layers={n_layers} "
                             f"n_heads={n_heads} grid={grid}")
        self.d_model, self.grid = d_model, grid
        d_ff = d_ff or 2 * d_model
        d_k = d_k or max(1, d_model // n_heads)
        self.layers = nn.ModuleList([EncoderLayer(d_model, n_heads, d_k, d_ff, dropout) for _ in range(n_layers)])
        self.u0 = nn.Parameter(torch.zeros(1, 1, d_model))
        self.row_embeddings = nn.Parameter(torch.randn(grid, d_model))
        self.column_embeddings = nn.Parameter(torch.zeros(grid, d_model))

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Queries for the masked positions.

        Args:
            src: visible patch features (B, N_visible, d_model), in the order of the visible positions.
            pos: masked positions (M,) as row-major indices into the grid (one pattern per batch).

        Returns:
            (B, M, d_model): the summary token's output plus the row and column embedding of each
            masked position.
        """
        x = torch.cat([self.u0.expand(src.shape[0], -1, -1).to(src.dtype), src], dim=1)  # (B, 1 + N, d)
        for layer in self.layers:
            x = layer(x)
        u = x[:, :1]  # (B, 1, d)
        emb = self.row_embeddings[pos // self.grid] + self.column_embeddings[pos % self.grid]  # (M, d)
        return u + emb.unsqueeze(0).to(u.dtype)
