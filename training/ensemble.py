"""The 3-task ensemble pretext of Chen et al. (CVPR 2020, section 3.3): rotation + jigsaw + selfie on one
shared trunk, with the gradient-diversity (log-det) penalty in both the attack and the training loss.

Split from ``tasks.py`` because it is the one task that composes the others and needs
second-order gradients (Chen et al., CVPR 2020, section 3.3; official ``pretraining/ensemble_pretrain.py``).
"""

from __future__ import annotations

import torch

from robustzoo.attacks import pgd
from robustzoo.models import ResNet
from training import jigsaw, selfie
from training.jigsaw import Jigsaw
from training.pretext import PretextTask
from training.rotation import Rotation
from training.selfie import Selfie

__all__ = ["Ensemble", "logdet_penalty"]


def logdet_penalty(grads: list[torch.Tensor], eps: float = 1e-5) -> torch.Tensor:
    """Gradient-diversity term h of the ensemble (spec 3): mean over the batch of log det(G^T G + eps I).

    Each per-sample gradient is flattened and normalised to unit L2 norm (+1e-10), G = [g1 g2 g3]
    (B, D, 3). The 3x3 determinant is written out (cofactor expansion): differentiable twice, and
    unlike a batched ``torch.logdet`` it needs no solver call, hence no device sync.
    """
    if len(grads) != 3:
        raise ValueError(f"the log-det penalty is defined for 3 task gradients, got {len(grads)}")
    g = [t.float().flatten(1) for t in grads]
    g = torch.stack([t / (t.norm(dim=1, keepdim=True) + 1e-10) for t in g], dim=2)  # (B, D, 3)
    m = g.transpose(1, 2) @ g + eps * torch.eye(3, device=g.device)
    a, b, c = m[:, 0, 0], m[:, 0, 1], m[:, 0, 2]
    d, e, f = m[:, 1, 0], m[:, 1, 1], m[:, 1, 2]
    gg, h, i = m[:, 2, 0], m[:, 2, 1], m[:, 2, 2]
    det = a * (e * i - f * h) - b * (d * i - f * gg) + c * (d * h - e * gg)
    return torch.log(det).mean()


class Ensemble(PretextTask):
    """Rotation + jigsaw + selfie on one shared trunk with the log-det penalty (spec 1.4, 3).

    The shared part is the backbone's stem + layer1-3; rotation and jigsaw each get a fresh layer4
    and a linear head; selfie uses the trunk as its patch encoder. The backbone's own layer4 is not
    trained (the paper transfers stem + layer1-3 only). Unlike the paper's ensemble model we keep
    the stem BN-ReLU, so the export is a standard ResNet with every stem parameter trained.

    ``attack_sign`` / ``train_sign`` (default +1, the official code): the attacker maximises
    ``L + attack_sign * lam * h`` and the trainer minimises ``L + train_sign * lam * h``.
    """

    name, metric_names = "ensemble", ("selfie", "jigsaw", "rotation")

    def __init__(self, backbone: ResNet, *, lam: float = 0.1, attack_sign: float = 1.0, train_sign: float = 1.0,
                 jigsaw: dict | None = None, selfie: dict | None = None) -> None:
        super().__init__()
        self.lam, self.attack_sign, self.train_sign = lam, attack_sign, train_sign
        self.selfie = Selfie(backbone, **(selfie or {}))
        self.jigsaw = Jigsaw(backbone, branch=True, **(jigsaw or {}))
        self.rotation = Rotation(backbone, branch=True)
        self.tasks = (self.selfie, self.jigsaw, self.rotation)

    def make_batch(self, x, gen, sl=slice(None)):
        batches = [t.make_batch(x, gen, sl) for t in self.tasks]
        return tuple(b[0] for b in batches), tuple(b[1] for b in batches)

    def _losses(self, backbone, inputs, targets):
        return [t.per_sample(backbone, i, y) for t, i, y in zip(self.tasks, inputs, targets)]

    def per_sample(self, backbone, inputs, targets):
        out = self._losses(backbone, inputs, targets)
        return torch.stack([o[0] for o in out]).mean(0), torch.cat([o[1] for o in out], dim=1)

    def _penalty(self, backbone, advs, targets, create_graph: bool):
        """Task losses at ``advs`` (requires grad), their input gradients and h."""
        out = self._losses(backbone, advs, targets)
        means = [o[0].mean() for o in out]
        grads = torch.autograd.grad(sum(means), advs, create_graph=True)
        return out, grads, logdet_penalty(list(grads))

    def attack(self, model, inputs, targets, *, eps, alpha, steps, mode, generator, amp=False):
        """Joint PGD over the three inputs with the second-order diversity term (``PGD_attack_3module``).

        Why not :func:`robustzoo.attacks.pgd`: its closure maps ONE input to a loss and it takes a
        first-order ``autograd.grad``; here three inputs are perturbed at once and the ascent
        direction ``sign(g_k + lam * dh/dx_k)`` needs the gradients themselves to be differentiable
        (``create_graph=True``). The start, step, projection and clamp are those of ``pgd``
        (uniform start clamped to [0, 1], then ``clip_[0,1](proj_eps(x + alpha * sign))``).
        """
        from robustzoo.attacks import model_mode

        xs = [i.detach() for i in inputs]
        project = lambda z, x: torch.min(torch.max(z, x - eps), x + eps).clamp(0, 1)  # noqa: E731
        advs = [project(x + (torch.rand(x.shape, generator=generator, device=x.device) * 2 - 1) * eps, x)
                for x in xs]
        with model_mode(model, mode), torch.enable_grad():
            for _ in range(steps):
                advs = [a.detach().requires_grad_(True) for a in advs]
                with torch.autocast(xs[0].device.type, dtype=torch.bfloat16, enabled=amp):
                    _, grads, h = self._penalty(model.backbone, advs, targets, create_graph=True)
                dh = torch.autograd.grad(self.attack_sign * self.lam * h, advs)
                advs = [project(a.detach() + alpha * (g.detach() + d).sign(), x)
                        for a, g, d, x in zip(advs, grads, dh, xs)]
        return tuple(a.detach() for a in advs)

    def eval_attack(self, model, inputs, targets, *, eps, alpha, steps, mode, generator, amp=False):
        """Independent per-task PGD, no penalty (the paper's evaluation)."""
        return tuple(pgd(lambda z, t=t, y=y: t.per_sample(model.backbone, z, y)[0], i, eps=eps, alpha=alpha,
                         steps=steps, model=model, mode=mode, generator=generator, amp=amp)
                     for t, i, y in zip(self.tasks, inputs, targets))

    def training_loss(self, backbone, inputs, targets, adv=None):
        """(6 task losses) / 6 + train_sign * lam * h(adv), h with double back-prop (spec 3)."""
        if adv is None:
            return super().training_loss(backbone, inputs, targets)
        lc, cc = self.per_sample(backbone, inputs, targets)
        advs = [a.detach().requires_grad_(True) for a in adv]
        out, _, h = self._penalty(backbone, advs, targets, create_graph=True)
        la = torch.stack([o[0] for o in out]).mean(0)
        ca = torch.cat([o[1] for o in out], dim=1)
        loss = (lc.mean() + la.mean()) / 2 + self.train_sign * self.lam * h
        return loss, (lc.detach().sum(), cc.detach().sum(0)), (la.detach().sum(), ca.detach().sum(0))

    def export_metadata(self):
        return self.jigsaw.export_metadata()


def build(backbone: ResNet, pretext, seed: int) -> Ensemble:
    """The task-table builder: the three tasks' settings plus the penalty's weight and signs."""
    return Ensemble(backbone, lam=pretext.ensemble_lambda, attack_sign=pretext.ensemble_attack_sign,
                    train_sign=pretext.ensemble_train_sign, jigsaw=jigsaw.settings(pretext, seed),
                    selfie=selfie.settings(pretext))
