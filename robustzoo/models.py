"""CIFAR-style pre-activation ResNets of Chen et al. (CVPR 2020), with normalisation inside.

The architectures follow the official code (``TAMU-VITA/Adv-SS-Pretraining``, ``resnetv2.py``)
exactly, quirks included:

* 3x3 stride-1 stem ``conv1`` followed by ``bn1`` + ReLU, no max-pool;
* pre-activation blocks whose first op is ``bn0`` + ReLU (so the first block applies a second
  BN-ReLU right after the stem);
* projection shortcuts are ``Conv1x1 + BN`` applied to the *pre-activated* input;
* no final BN-ReLU before global average pooling; all convolutions are bias-free;
* the classifier is called ``linear``.

``resnet50v2`` (bottleneck, [3, 4, 6, 3]) has 23,516,874 parameters with 10 classes;
``resnet18`` (basic pre-act block, [2, 2, 2, 2]) 11,173,066.

Every model takes inputs in [0, 1] and normalises them with its first module
(:class:`Normalize`, mean/std buffers), so attack budgets are in pixel units. Models follow the
timm contract: ``num_features``, ``forward_features``, ``forward_head``, ``reset_classifier``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ARCHS",
    "Normalize",
    "ResNet",
    "SoftmaxEnsemble",
    "create_model",
    "resnet18",
    "resnet50v2",
]

# The official code normalises CIFAR-10 with ImageNet statistics (advertorch's NormalizeByChannelMeanStd in front
# of every network); we keep that default.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, with mean/std stored as buffers (saved with the weights)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _shortcut(in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class PreActBlock(nn.Module):
    """Pre-activation basic block (He et al. 2016, "Identity Mappings"), ResNet-18v2."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.shortcut = _shortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn0(x))
        out = self.conv2(F.relu(self.bn1(self.conv1(pre))))
        # the projection sees the pre-activated input, as in the official resnetv2.py
        return out + (x if self.shortcut is None else self.shortcut(pre))


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck of ResNet-50v2 as coded by Chen et al. (stride on the 3x3)."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn0 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.shortcut = _shortcut(in_planes, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn0(x))
        out = F.relu(self.bn1(self.conv1(pre)))
        out = self.conv3(F.relu(self.bn2(self.conv2(out))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


ARCHS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (PreActBlock, (2, 2, 2, 2)),
    "resnet50v2": (PreActBottleneck, (3, 4, 6, 3)),
}


class ResNet(nn.Module):
    """CIFAR-style pre-activation ResNet (Chen et al., CVPR 2020, ``resnetv2.py``).

    Args:
        arch: ``"resnet18"`` or ``"resnet50v2"``.
        num_classes: classifier width; 0 builds a headless backbone (``forward`` returns pooled
            features of size ``num_features``).
        in_chans: input channels (3 for CIFAR, 1 for Fashion-MNIST).
        width: multiplier on every stage width (1.0 = the paper; small values for tests/CPU).
        mean, std: per-channel normalisation applied inside the model; inputs are in [0, 1].
    """

    def __init__(
        self,
        arch: str = "resnet18",
        num_classes: int = 10,
        in_chans: int = 3,
        width: float = 1.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")
        if not (isinstance(num_classes, int) and num_classes >= 0):
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        if not (isinstance(in_chans, int) and in_chans >= 1):
            raise ValueError(f"in_chans must be an int >= 1, got {in_chans!r}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width!r}")
        block, layers = ARCHS[arch]
        mean = tuple(mean) if mean is not None else _default_stats(IMAGENET_MEAN, in_chans)
        std = tuple(std) if std is not None else _default_stats(IMAGENET_STD, in_chans)
        if len(mean) != in_chans:
            raise ValueError(f"mean has {len(mean)} values but in_chans={in_chans}")
        self.arch, self.width, self.in_chans = arch, float(width), in_chans
        self.normalize = Normalize(mean, std)
        stem = max(1, int(round(64 * width)))
        self.conv1 = nn.Conv2d(in_chans, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        planes = [max(1, int(round(p * width))) for p in (64, 128, 256, 512)]
        in_planes = stem
        for i, (p, n) in enumerate(zip(planes, layers)):
            blocks = []
            for j in range(n):
                blocks.append(block(in_planes, p, stride=1 if (i == 0 or j > 0) else 2))
                in_planes = p * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_features = in_planes
        self.num_classes = num_classes
        self.linear: nn.Module = nn.Linear(in_planes, num_classes) if num_classes else nn.Identity()

    @property
    def config(self) -> dict:
        """Everything needed to rebuild this model (written to ``config.json``)."""
        return {
            "arch": self.arch,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "width": self.width,
            "mean": [float(v) for v in self.normalize.mean.flatten()],
            "std": [float(v) for v in self.normalize.std.flatten()],
        }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise and run stem + layer1-4; returns the unpooled map (B, num_features, h, w)."""
        x = F.relu(self.bn1(self.conv1(self.normalize(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool (the paper's ``avg_pool2d(., 4)`` on 32x32 inputs) then ``linear``."""
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return x if pre_logits else self.linear(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.linear

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a fresh ``Linear(num_features, num_classes)`` (0 = no head)."""
        if not (isinstance(num_classes, int) and num_classes >= 0):
            raise ValueError(f"num_classes must be an int >= 0, got {num_classes!r}")
        self.num_classes = num_classes
        ref = self.conv1.weight
        self.linear = (
            nn.Linear(self.num_features, num_classes).to(ref.device) if num_classes else nn.Identity()
        )

    def finetune(self, data, **kwargs):
        """Fine-tune this model on ``data``; see :func:`robustzoo.finetuning.finetune`."""
        from .finetuning import finetune

        return finetune(self, data, **kwargs)


def _default_stats(stats: tuple[float, ...], in_chans: int) -> tuple[float, ...]:
    if in_chans == 3:
        return stats
    return (sum(stats) / 3,) * in_chans  # grey-level average of the ImageNet statistics


class SoftmaxEnsemble(nn.Module):
    """Average of the members' softmax outputs, as in the paper's 3-model ensemble (section 4.5).

    ``forward`` returns ``log(mean_k softmax(f_k(x)))``: log-probabilities, which are valid logits
    (``softmax`` of them gives back the averaged probabilities and cross-entropy on them is the
    ensemble's NLL), so attacks and AutoAttack's logit check work on the ensemble unchanged.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("an ensemble needs at least one member")
        classes = {getattr(m, "num_classes", None) for m in members}
        if len(classes) != 1 or not next(iter(classes)):
            raise ValueError(f"ensemble members must share a non-zero num_classes, got {classes}")
        self.members = nn.ModuleList(members)
        self.num_classes = int(next(iter(classes)))
        self.in_chans = getattr(members[0], "in_chans", 3)

    @property
    def config(self) -> dict:
        return {"arch": "ensemble", "members": [m.config for m in self.members]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([F.log_softmax(m(x), dim=1) for m in self.members])
        return torch.logsumexp(logp, dim=0) - torch.log(torch.tensor(float(len(self.members))))

    def finetune(self, data, **kwargs):
        raise TypeError("fine-tune the ensemble members one by one, then wrap them again")


def resnet18(**kwargs) -> ResNet:
    """Pre-activation ResNet-18 (ResNet-18v2 of ``resnetv2.py``), CIFAR stem."""
    return ResNet("resnet18", **kwargs)


def resnet50v2(**kwargs) -> ResNet:
    """The paper's ResNet-50v2 (Chen et al., CVPR 2020, section 1.1 of the spec)."""
    return ResNet("resnet50v2", **kwargs)


def create_model(arch: str, **kwargs) -> nn.Module:
    """Build a model from an architecture name or a config dict's ``arch``.

    ``arch`` is ``"resnet18"``, ``"resnet50v2"`` (keyword arguments as :class:`ResNet`), or
    ``"ensemble"`` with ``members=[config, ...]``.
    """
    if arch == "ensemble":
        members = kwargs.pop("members", None)
        if not members or kwargs:
            raise ValueError("an ensemble config needs only 'members': a non-empty list of configs")
        return SoftmaxEnsemble([create_model(**dict(m)) for m in members])
    if arch not in ARCHS:
        import difflib

        close = difflib.get_close_matches(arch, [*ARCHS, "ensemble"], n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown architecture {arch!r}{hint} (known: {', '.join([*ARCHS, 'ensemble'])})")
    unknown = set(kwargs) - {"num_classes", "in_chans", "width", "mean", "std"}
    if unknown:
        raise TypeError(f"unexpected model arguments {sorted(unknown)}")
    return ResNet(arch, **kwargs)
