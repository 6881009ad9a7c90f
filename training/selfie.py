"""Selfie (Trinh et al. 2019), as the official selfie pretraining code does it (spec 2.5)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustzoo.models import ResNet
from training.pretext import PretextTask, split_patches, trunk, trunk_width
from training.selfie_net import SelfieTransformer

__all__ = ["Selfie"]


class Selfie(PretextTask):
    """Selfie (spec 2.5): 4 of 16 patches masked, one mask pattern per batch, pick the right patch per slot.

    Every patch goes through :func:`trunk` (stem + layer1-3) and global average pooling; the 12
    visible features (in the order of the drawn permutation) feed the transformer, whose 4 queries
    are scored by dot product against the 4 masked patches' features. The loss is the *sum* over
    the 4 positions of a 4-way cross-entropy (paper). ``loss`` chooses what the CE is applied to:

    * ``"double-softmax"`` (default, the official code): CE on softmax *probabilities*, a bounded loss
      (spec 7.7);
    * ``"logits"``: CE on the raw dot products. The scores are unbounded (layer3 outputs are not
      normalised) and with the paper's SGD at lr 0.1 this diverged to NaN within one epoch in our
      tiny check (README), which is presumably why the code's double softmax trains at all;
    * ``"scaled-logits"``: CE on dot products / sqrt(d) (the usual attention temperature); stable,
      and it learned faster than double softmax in the same check. Not the paper.
    """

    name, metric_names = "selfie", ("selfie",)
    LOSSES = ("double-softmax", "logits", "scaled-logits")

    def __init__(self, backbone: ResNet, *, grid: int = 4, masked: int = 4, n_layers: int = 13, n_heads: int = 16,
                 d_model: int = 0, d_ff: int = 0, dropout: float = 0.1, loss: str = "double-softmax") -> None:
        super().__init__()
        if loss not in self.LOSSES:
            raise ValueError(f"selfie loss must be one of {self.LOSSES}, got {loss!r}")
        self.grid, self.masked, self.loss = grid, masked, loss
        width = trunk_width(backbone)
        d_model = d_model or width
        self.proj = nn.Identity() if d_model == width else nn.Linear(width, d_model)  # only if resized
        self.transformer = SelfieTransformer(d_model, n_layers, n_heads, d_ff, dropout, grid)

    def make_batch(self, x, gen, sl=slice(None)):
        return x[sl], torch.randperm(self.grid * self.grid, generator=gen, device=x.device)

    def features(self, backbone: ResNet, x: torch.Tensor) -> torch.Tensor:
        """Patch features (B, G*G, d) of the shared patch encoder P."""
        p = split_patches(x, self.grid)
        b, n = p.shape[:2]
        f = trunk(backbone, p.reshape(b * n, *p.shape[2:]))
        return self.proj(torch.flatten(F.adaptive_avg_pool2d(f, 1), 1)).view(b, n, -1)

    def scores(self, backbone: ResNet, x: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
        """(B, M, M): score of candidate patch j for masked slot i (the right answer is j = i)."""
        f = self.features(backbone, x)
        t, v = seq[: self.masked], seq[self.masked:]
        q = self.transformer(f[:, v], t)  # (B, M, d)
        return torch.bmm(q.float(), f[:, t].float().transpose(1, 2))

    def per_sample(self, backbone, inputs, targets):
        s = self.scores(backbone, inputs, targets)
        b, m, _ = s.shape
        y = torch.arange(m, device=s.device).repeat(b)
        if self.loss == "double-softmax":
            z = s.softmax(-1)
        else:
            z = s / math.sqrt(self.transformer.d_model) if self.loss == "scaled-logits" else s
        loss = F.cross_entropy(z.reshape(b * m, m), y, reduction="none").view(b, m).sum(1)
        return loss, (s.argmax(-1) == y.view(b, m)).float().mean(1, keepdim=True)


def settings(pretext) -> dict:
    """Selfie's keyword arguments from the recipe's pretext part."""
    return dict(grid=pretext.grid, masked=pretext.selfie_masked, n_layers=pretext.selfie_layers,
                n_heads=pretext.selfie_heads, d_model=pretext.selfie_d_model, d_ff=pretext.selfie_d_ff,
                dropout=pretext.selfie_dropout, loss=pretext.selfie_loss)


def build(backbone: ResNet, pretext, seed: int) -> Selfie:
    return Selfie(backbone, **settings(pretext))
