"""Rotation prediction (Gidaris et al. 2018), as the official ``train_adv_rotation.py`` does it (spec 2.3)."""

from __future__ import annotations

import torch

from robustzoo.models import ResNet
from training.pretext import Branch, PretextTask, _classify

__all__ = ["Rotation"]


class Rotation(PretextTask):
    """4-way rotation prediction; one rotation per image, batch-balanced labels (spec 2.3).

    ``labels = permutation([0, 1, 2, 3] * (B // 4 + 1))[:B]`` and image i is rotated by
    ``labels[i] * 90`` degrees (``torch.rot90`` on dims (2, 3)). With ``branch=False`` the head is
    the backbone's own ``linear`` (built with 4 classes), so the export is ``reset_classifier(0)``;
    the ensemble uses ``branch=True``: its own layer4 copy and ``Linear(num_features, 4)``.
    """

    name, metric_names, num_classes = "rotation", ("rotation",), 4

    def __init__(self, backbone: ResNet, branch: bool = False) -> None:
        super().__init__()
        self.branch = Branch(backbone, self.num_classes, branch)

    def make_batch(self, x, gen, sl=slice(None)):
        b = x.shape[0]
        if x.shape[-1] != x.shape[-2]:
            raise ValueError(f"rotation needs square images, got {tuple(x.shape[-2:])}")
        base = torch.arange(4, device=x.device).repeat(b // 4 + 1)
        labels = base[torch.randperm(base.numel(), generator=gen, device=x.device)][:b][sl]
        x = x[sl]
        rots = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)])  # (4, B, C, H, W)
        return rots[labels, torch.arange(x.shape[0], device=x.device)], labels

    def per_sample(self, backbone, inputs, targets):
        return _classify(self.branch(backbone, inputs), targets)


def build(backbone: ResNet, pretext, seed: int) -> Rotation:
    """The task-table builder: rotation has no settings of its own."""
    return Rotation(backbone)
