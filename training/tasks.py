"""Pretext tasks of Chen et al. (CVPR 2020): rotation, jigsaw, selfie (the ensemble: ``ensemble.py``).

Each task is a small unit that (1) makes ``(inputs, targets)`` from a batch of augmented images,
vectorised on the batch's device with an explicit ``torch.Generator`` (no per-image Python loop),
(2) owns its head (the parameters that are not the shared ResNet backbone) and (3) owns its loss.
Standard vs adversarial pretraining is not a task property but a recipe value: the adversarial
inputs come from :func:`robustzoo.attacks.pgd` (PGD-10, eps 8/255, step 2/255, random start,
train-mode attack) and the training loss is ``(clean + adversarial) / 2`` (``paper_spec.md`` 2.2-2.5).

The backbone is always a :class:`robustzoo.models.ResNet`; tasks receive it as an argument so that
it has exactly one owner (:class:`PretextModel`) and exports as a plain headless ResNet.

References: Gidaris et al. 2018 (rotation), Noroozi and Favaro 2016 (jigsaw), Trinh et al. 2019
(Selfie); the batch schemes and quirks reproduced here are those of the official code
(``TAMU-VITA/Adv-SS-Pretraining``, spec sections 2.3-2.5 and 3).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from robustzoo.attacks import pgd
from robustzoo.models import ResNet
from training.selfie import SelfieTransformer

__all__ = ["PretextModel", "Rotation", "Jigsaw", "Selfie", "make_task", "trunk", "split_patches",
           "merge_patches", "jigsaw_permutations"]  # the ensemble task: training/ensemble.py

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


def make_task(recipe, backbone: ResNet) -> PretextTask:
    """Build the task a recipe names, with its task-specific settings."""
    jig = dict(num_classes=recipe.jigsaw_classes, grid=recipe.grid, identity_prob=recipe.jigsaw_identity_prob,
               seed=recipe.seed)
    sel = dict(grid=recipe.grid, masked=recipe.selfie_masked, n_layers=recipe.selfie_layers,
               n_heads=recipe.selfie_heads, d_model=recipe.selfie_d_model, d_ff=recipe.selfie_d_ff,
               dropout=recipe.selfie_dropout, loss=recipe.selfie_loss)
    if recipe.task == "rotation":
        return Rotation(backbone)
    if recipe.task == "jigsaw":
        return Jigsaw(backbone, **jig)
    if recipe.task == "selfie":
        return Selfie(backbone, **sel)
    if recipe.task == "ensemble":
        from training.ensemble import Ensemble  # it builds on the three tasks above

        return Ensemble(backbone, lam=recipe.ensemble_lambda, attack_sign=recipe.ensemble_attack_sign,
                        train_sign=recipe.ensemble_train_sign, jigsaw=jig, selfie=sel)
    raise ValueError(f"recipe {recipe.name!r} has no pretext task (task={recipe.task!r})")
