"""What every pretext task of Chen et al. (CVPR 2020) shares: the base class, heads, patch helpers, the model.

The tasks themselves are one file each (``rotation.py``, ``jigsaw.py``, ``selfie.py``, ``ensemble.py``),
listed in the task table of ``tasks.py``.

Each task is a small unit that (1) makes ``(inputs, targets)`` from a batch of augmented images,
vectorised on the batch's device with an explicit ``torch.Generator`` (no per-image Python loop),
(2) owns its head (the parameters that are not the shared ResNet backbone) and (3) owns its loss.
Standard vs adversarial pretraining is not a task property but a recipe value: the adversarial
inputs come from :func:`robustzoo.attacks.pgd` (PGD-10, eps 8/255, step 2/255, random start,
train-mode attack) and the training loss is ``(clean + adversarial) / 2`` (official ``pretraining/train_adv_*.py``).

The backbone is always a :class:`robustzoo.models.ResNet`; tasks receive it as an argument so that
it has exactly one owner (:class:`PretextModel`) and exports as a plain headless ResNet.

References: Gidaris et al. 2018 (rotation), Noroozi and Favaro 2016 (jigsaw), Trinh et al. 2019
(Selfie); the batch schemes and quirks reproduced here are those of the official code
(``TAMU-VITA/Adv-SS-Pretraining``, spec sections 2.3-2.5 and 3).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from robustzoo.attacks import pgd
from robustzoo.models import ResNet

__all__ = ["PretextTask", "PretextModel", "Branch", "trunk", "trunk_width", "split_patches", "merge_patches"]

Batch = tuple  # (inputs, targets); tensors or tuples of tensors, task-specific


def trunk(backbone: ResNet, x: torch.Tensor) -> torch.Tensor:
    """theta_p of the paper: normalise + stem + layer1-3 (B, C3, H/4, W/4)."""
    x = F.relu(backbone.bn1(backbone.conv1(backbone.normalize(x))))
    return backbone.layer3(backbone.layer2(backbone.layer1(x)))


def trunk_width(backbone: ResNet) -> int:
    """Channels out of layer3 (= the input width of layer4's first block)."""
    return backbone.layer4[0].bn0.num_features


def split_patches(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, grid*grid, C, H/grid, W/grid), patches in row-major order (k = row*grid + col)."""
    b, c, h, w = x.shape
    if h % grid or w % grid:
        raise ValueError(f"image size {h}x{w} is not divisible by the {grid}x{grid} patch grid")
    x = x.reshape(b, c, grid, h // grid, grid, w // grid).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, grid * grid, c, h // grid, w // grid)


def merge_patches(p: torch.Tensor, grid: int) -> torch.Tensor:
    """Inverse of :func:`split_patches`."""
    b, _, c, ph, pw = p.shape
    return p.reshape(b, grid, grid, c, ph, pw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, grid * ph, grid * pw)


def _classify(logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logits = logits.float()
    return F.cross_entropy(logits, y, reduction="none"), (logits.argmax(1) == y).float()[:, None]


class PretextTask(nn.Module):
    """Base class: holds only the task's own head parameters."""

    name = ""
    metric_names: tuple[str, ...] = ()

    def make_batch(self, x: torch.Tensor, gen: torch.Generator, sl: slice = slice(None)) -> Batch:
        """Draw the pretext labels for the *whole* batch ``x`` from ``gen`` and return those of rows ``sl``.

        Drawing for the whole (global) batch keeps the random stream identical however the batch is
        sharded across data-parallel ranks.
        """
        raise NotImplementedError

    def per_sample(self, backbone: ResNet, inputs, targets) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sample loss (B,) and per-sample correctness (B, len(metric_names))."""
        raise NotImplementedError

    def attack(self, model: nn.Module, inputs, targets, *, eps: float, alpha: float, steps: int, mode: str,
               generator: torch.Generator | None, amp: bool = False):
        """PGD on the task loss via :func:`robustzoo.attacks.pgd` (spec 2.2)."""
        return pgd(lambda z: self.per_sample(model.backbone, z, targets)[0], inputs, eps=eps, alpha=alpha,
                   steps=steps, model=model, mode=mode, generator=generator, amp=amp)

    eval_attack = attack  # the evaluation attack is the same PGD (in eval mode, with more steps)

    def training_loss(self, backbone: ResNet, inputs, targets, adv=None):
        """(clean) or (clean + adversarial) / 2 (spec 2.3); returns (loss, clean stats, adv stats)."""
        lc, cc = self.per_sample(backbone, inputs, targets)
        if adv is None:
            return lc.mean(), (lc.detach().sum(), cc.detach().sum(0)), None
        la, ca = self.per_sample(backbone, adv, targets)
        loss = (lc.mean() + la.mean()) / 2
        return loss, (lc.detach().sum(), cc.detach().sum(0)), (la.detach().sum(), ca.detach().sum(0))

    def export_metadata(self) -> dict[str, str]:
        """String metadata stored with the exported backbone (e.g. the jigsaw permutations)."""
        return {}


class Branch(nn.Module):
    """A classification head: the backbone's own layer4 + ``linear`` (single task), or, for the ensemble
    (``own_layer4=True``), a fresh layer4 and ``Linear(num_features, num_classes)`` on the shared trunk.

    In the single-task case the backbone is (re)built with ``num_classes`` outputs so the export is
    just ``reset_classifier(0)``.
    """

    def __init__(self, backbone: ResNet, num_classes: int, own_layer4: bool) -> None:
        super().__init__()
        self.layer4 = self.head = None
        if own_layer4:  # a fresh layer4, as in the paper's PretrainEnsembleModel
            fresh = ResNet(backbone.arch, num_classes=0, in_chans=backbone.in_chans, width=backbone.width)
            self.layer4 = fresh.layer4
            self.head = nn.Linear(backbone.num_features, num_classes)
        elif backbone.num_classes != num_classes:
            backbone.reset_classifier(num_classes)

    def forward(self, backbone: ResNet, x: torch.Tensor) -> torch.Tensor:
        if self.layer4 is None:
            return backbone(x)
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.layer4(trunk(backbone, x)), 1), 1))

class PretextModel(nn.Module):
    """The one owner of the backbone and the task head; what the optimiser trains.

    ``freeze_bn=True`` keeps every BatchNorm in eval mode (running statistics fixed), which makes
    a data-parallel run exactly equal to a single-process run (used by tests; not the paper).
    """

    def __init__(self, backbone: ResNet, task: PretextTask, freeze_bn: bool = False) -> None:
        super().__init__()
        self.backbone, self.task, self.freeze_bn = backbone, task, freeze_bn

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_bn:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def forward(self, inputs, targets, adv=None):
        return self.task.training_loss(self.backbone, inputs, targets, adv)

    def export_backbone(self) -> ResNet:
        """A headless copy of the backbone (what gets published), on the CPU."""
        bb = copy.deepcopy(self.backbone).cpu().float()
        bb.reset_classifier(0)
        return bb.eval()
