"""Jigsaw (Noroozi and Favaro 2016), as the official jigsaw pretraining code does it (spec 2.4)."""

from __future__ import annotations

import torch

from robustzoo.models import ResNet
from training.pretext import Branch, PretextTask, _classify, merge_patches, split_patches

__all__ = ["Jigsaw", "jigsaw_permutations"]


def jigsaw_permutations(n: int, patches: int, seed: int) -> torch.Tensor:
    """Identity + ``n - 1`` uniformly random permutations of ``patches`` (spec 2.4: no Hamming selection)."""
    g = torch.Generator().manual_seed(seed)
    perms = [torch.arange(patches)] + [torch.randperm(patches, generator=g) for _ in range(n - 1)]
    return torch.stack(perms)


class Jigsaw(PretextTask):
    """Jigsaw: a grid x grid puzzle of the whole image, classify which of ``num_classes`` permutations (spec 2.4).

    Class 0 is the identity, classes 1.. are random permutations drawn from ``seed``; labels are
    uniform over the classes, then replaced by 0 with probability ``identity_prob`` (the paper's
    ``bias = 0.9``), so P(class 0) = 0.1 + 0.9 / 31. Shuffled position j receives original patch
    ``perm[j]``; the re-assembled image goes through the whole ResNet.
    """

    name, metric_names = "jigsaw", ("jigsaw",)

    def __init__(self, backbone: ResNet, *, num_classes: int = 31, grid: int = 4, identity_prob: float = 0.1,
                 seed: int = 0, branch: bool = False) -> None:
        super().__init__()
        self.num_classes, self.grid, self.identity_prob = num_classes, grid, identity_prob
        self.register_buffer("permutations", jigsaw_permutations(num_classes, grid * grid, seed))
        self.branch = Branch(backbone, num_classes, branch)

    def make_batch(self, x, gen, sl=slice(None)):
        b = x.shape[0]
        order = torch.randint(self.num_classes, (b,), generator=gen, device=x.device)
        keep = torch.rand(b, generator=gen, device=x.device) >= self.identity_prob
        order = torch.where(keep, order, torch.zeros_like(order))[sl]
        p = split_patches(x[sl], self.grid)  # (B, G*G, C, ph, pw)
        idx = self.permutations[order]  # (B, G*G): new position j <- old patch idx[j]
        p = p.gather(1, idx[:, :, None, None, None].expand_as(p))
        return merge_patches(p, self.grid), order

    def per_sample(self, backbone, inputs, targets):
        return _classify(self.branch(backbone, inputs), targets)

    def export_metadata(self):
        import json

        return {"jigsaw_permutations": json.dumps(self.permutations.cpu().tolist()), "jigsaw_grid": str(self.grid)}


def settings(pretext, seed: int) -> dict:
    """Jigsaw's keyword arguments from the recipe's pretext part (the permutations are drawn from ``seed``)."""
    return dict(num_classes=pretext.jigsaw_classes, grid=pretext.grid, identity_prob=pretext.jigsaw_identity_prob,
                seed=seed)


def build(backbone: ResNet, pretext, seed: int) -> Jigsaw:
    return Jigsaw(backbone, **settings(pretext, seed))
