"""The task table: every pretext task of Chen et al. (CVPR 2020), one row each.

A row names the task's file (its ``build(backbone, pretext_settings, seed)``), the short name its
recipes start with (``rot-adv-r50``) and whether the task trains the backbone's ``layer4`` (rotation
and jigsaw classify through the whole ResNet; selfie and the ensemble train stem + layer1-3 only,
the paper's theta_p). Adding a pretext task is one new file with a ``PretextTask`` subclass and a
``build`` function, plus one row here (see training/README.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from robustzoo.models import ResNet
from training import ensemble, jigsaw, rotation, selfie
from training.ensemble import Ensemble
from training.jigsaw import Jigsaw, jigsaw_permutations
from training.pretext import PretextModel, PretextTask, merge_patches, split_patches, trunk
from training.rotation import Rotation
from training.selfie import Selfie

__all__ = ["TASKS", "TaskRow", "make_task", "PretextModel", "PretextTask", "Rotation", "Jigsaw", "Selfie",
           "Ensemble", "trunk", "split_patches", "merge_patches", "jigsaw_permutations"]


@dataclass(frozen=True)
class TaskRow:
    build: Callable[[ResNet, object, int], PretextTask]  # (backbone, recipe.pretext, seed) -> task
    trains_layer4: bool  # whether the published backbone's layer4 was trained by the pretext


TASKS: dict[str, TaskRow] = {
    "rotation": TaskRow(rotation.build, trains_layer4=True),
    "jigsaw": TaskRow(jigsaw.build, trains_layer4=True),
    "selfie": TaskRow(selfie.build, trains_layer4=False),
    "ensemble": TaskRow(ensemble.build, trains_layer4=False),
}


def make_task(pretext, backbone: ResNet, seed: int | None = None) -> PretextTask:
    """Build the task ``pretext.task`` names. ``pretext`` is a recipe's pretext part (then pass ``seed``)
    or a whole recipe (its ``seed`` is used)."""
    seed = pretext.seed if seed is None else seed
    row = TASKS.get(pretext.task)
    if row is None:
        raise ValueError(f"no pretext task {pretext.task!r} (tasks: {', '.join(TASKS)})")
    return row.build(backbone, getattr(pretext, "pretext", pretext), seed)
