"""Gradient attacks on single images: FGSM, PGD (L-inf and L2) and MI-FGSM.

- FGSM: Goodfellow et al., "Explaining and Harnessing Adversarial Examples", ICLR 2015.
- PGD: Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
- MI-FGSM: Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018.

All are vectorised over the batch. The iterative ones stop early per image by default
(`early_stop=True`): an image whose logits already meet the success criterion at some step is
frozen there and leaves the batch, so later steps only run on the images still resisting. An image
that was adversarial at some step therefore stays adversarial, so robust accuracy is never higher
than without early stopping, and the compute shrinks with the batch. `early_stop=False` runs every
step on every image, as torchattacks and foolbox do.
"""

from __future__ import annotations

import math
from typing import Any

from edgeattack.attacks.whitebox.base import WhiteBoxAttack
from edgeattack.attacks.whitebox.model import AttackModel, Tensor, torch
from edgeattack.attacks.whitebox.norms import per_image_norm, project
from edgeattack.attacks.whitebox.outputs import RunResult
from edgeattack.attacks.whitebox.validation import choice, positive_float, positive_int

LOSSES = ("ce", "margin")


def attack_loss(logits: Tensor, y: Tensor, target: Tensor | None, loss: str = "ce") -> Tensor:
    """The objective the attack *ascends*, summed over the batch.

    "ce": cross-entropy of the true label (untargeted) or minus that of the target (targeted).
    "margin" (Carlini-Wagner): best other logit minus the true logit (untargeted), or the target
    logit minus the best other one (targeted).
    """
    functional = torch.nn.functional
    if loss == "ce":
        if target is None:
            return functional.cross_entropy(logits, y, reduction="sum")
        return -functional.cross_entropy(logits, target, reduction="sum")
    cls = y if target is None else target
    own = logits.gather(1, cls[:, None]).squeeze(1)
    others = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
    return (others - own).sum() if target is None else (own - others).sum()


def loss_gradient(
    model: AttackModel, x: Tensor, y: Tensor, target: Tensor | None, loss: str = "ce"
) -> tuple[Tensor, Tensor]:
    """Gradient of `attack_loss` with respect to the input only, and the (detached) logits at `x`.

    The loss is computed on float32 logits (`AttackModel` returns them so under autocast too).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        value = attack_loss(logits.float(), y, target, loss)
        (grad,) = torch.autograd.grad(value, x)
    return grad, logits.detach()


def _view(values: Tensor, like: Tensor) -> Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


class FGSM(WhiteBoxAttack):
    """Fast Gradient Sign Method (L-inf): one step of size `eps` along the sign of the gradient.

    Args:
        eps: L-inf radius, in the units of the model's bounds (8/255 for [0,1] images).
        loss: "ce" (cross-entropy) or "margin" (Carlini-Wagner margin).
    """

    name = "fgsm"
    norm = "linf"

    def __init__(self, *, eps: float = 8 / 255, loss: str = "ce", **common: Any) -> None:
        self.eps = positive_float("eps", eps)
        self.loss = choice("loss", loss, LOSSES)
        super().__init__(**common)

    def run(self, model: AttackModel, x: Tensor, y: Tensor, *, target: Tensor | None) -> RunResult:
        grad, logits = loss_gradient(model, x, y, target, self.loss)
        return RunResult(adversarial=model.clip(x + self.eps * grad.sign()), clean_logits=logits)


class _IterativeAttack(WhiteBoxAttack):
    """Shared loop of PGD and MI-FGSM: start, then `steps` gradient steps with projection and clipping."""

    random_start: bool = False
    early_stop: bool = True
    steps: int = 10
    step_size: float = 0.0
    loss: str = "ce"

    def run(self, model: AttackModel, x: Tensor, y: Tensor, *, target: Tensor | None) -> RunResult:
        n = x.shape[0]
        adv = self._start(x, model) if self.random_start else x
        clean_logits: Tensor | None = None
        state: Tensor | None = self._init_state(x)
        # the eps-ball intersected with the bounds, once: a step then needs one clamp
        low = (x - self.eps).clamp_(min=model.bounds[0]) if self.norm == "linf" else x
        high = (x + self.eps).clamp_(max=model.bounds[1]) if self.norm == "linf" else x
        final = x.clone() if self.early_stop else x
        final_logits: Tensor | None = None
        evaluated = torch.zeros(n, dtype=torch.bool, device=x.device)
        rows = torch.arange(n, device=x.device)
        x0, ya, ta = x, y, target
        for index in range(self.steps):
            grad, logits = loss_gradient(model, adv, ya, ta, self.loss)
            if index == 0 and not self.random_start:
                clean_logits = logits  # the first gradient is taken at the clean images
            if self.early_stop:
                done = self.is_success(logits, ya, ta)
                if bool(done.any()):
                    if final_logits is None:
                        final_logits = torch.empty(n, logits.shape[1], dtype=logits.dtype, device=x.device)
                    hit = rows[done]
                    final[hit] = adv[done]
                    final_logits[hit] = logits[done]
                    evaluated[hit] = True
                    keep = ~done
                    rows, adv, grad, x0, ya = rows[keep], adv[keep], grad[keep], x0[keep], ya[keep]
                    low, high = low[keep], high[keep]
                    ta = None if ta is None else ta[keep]
                    state = None if state is None else state[keep]
                    if rows.numel() == 0:
                        break
            adv, state = self._step(adv, x0, grad, state, model, low, high)
        if not self.early_stop:
            return RunResult(adversarial=adv, clean_logits=clean_logits)
        if rows.numel():
            final[rows] = adv
        return RunResult(adversarial=final, logits=final_logits, evaluated=evaluated, clean_logits=clean_logits)

    # hooks --------------------------------------------------------------------------------------
    def _start(self, x: Tensor, model: AttackModel) -> Tensor:
        shape = tuple(x.shape[1:])
        noise = self.per_row(lambda g: torch.rand(shape, generator=g)).to(x.device, x.dtype)
        return model.clip(x + (noise * 2 - 1) * self.eps)

    def _init_state(self, x: Tensor) -> Tensor | None:
        return None

    def _step(
        self, adv: Tensor, x0: Tensor, grad: Tensor, state: Tensor | None, model: AttackModel, low: Tensor, high: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """One step from `adv` (a new tensor; `adv` itself is left alone). `low`/`high`: the L-inf
        ball around `x0` intersected with the bounds (unused by L2)."""
        raise NotImplementedError


def _iterative_params(eps: float, steps: int, step_size: float | None, default_factor: float) -> tuple[float, int, float]:
    eps = positive_float("eps", eps)
    steps = positive_int("steps", steps)
    size = default_factor * eps / steps if step_size is None else positive_float("step_size", step_size)
    return eps, steps, size


class LinfPGD(_IterativeAttack):
    """Projected Gradient Descent in the L-inf ball (Madry et al.).

    Args:
        eps: L-inf radius in the units of the bounds.
        steps: number of gradient steps.
        step_size: absolute step size; default 2.5 * eps / steps.
        random_start: start from a uniform random point of the ball (seeded with `seed`).
        early_stop: freeze each image at the first step where it is adversarial (see the module doc).
        loss: "ce" or "margin".
    """

    name = "pgd"
    norm = "linf"

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool = True,
        early_stop: bool = True,
        loss: str = "ce",
        **common: Any,
    ) -> None:
        self.eps, self.steps, self.step_size = _iterative_params(eps, steps, step_size, 2.5)
        self.random_start = bool(random_start)
        self.early_stop = bool(early_stop)
        self.loss = choice("loss", loss, LOSSES)
        super().__init__(**common)

    def _step(
        self, adv: Tensor, x0: Tensor, grad: Tensor, state: Tensor | None, model: AttackModel, low: Tensor, high: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        step = grad.sign_().mul_(self.step_size)
        return torch.clamp(step.add_(adv), min=low, max=high), None


class L2PGD(_IterativeAttack):
    """Projected Gradient Descent in the L2 ball: steps along the L2-normalised gradient.

    Args:
        eps: L2 radius of each image's perturbation, in the units of the bounds.
        steps, step_size (default 2.5 * eps / steps), random_start (uniform in the ball),
        early_stop, loss: as for `LinfPGD`.
    """

    name = "pgd-l2"
    norm = "l2"

    def __init__(
        self,
        *,
        eps: float = 0.5,
        steps: int = 10,
        step_size: float | None = None,
        random_start: bool = True,
        early_stop: bool = True,
        loss: str = "ce",
        **common: Any,
    ) -> None:
        self.eps, self.steps, self.step_size = _iterative_params(eps, steps, step_size, 2.5)
        self.random_start = bool(random_start)
        self.early_stop = bool(early_stop)
        self.loss = choice("loss", loss, LOSSES)
        super().__init__(**common)

    def _start(self, x: Tensor, model: AttackModel) -> Tensor:
        shape, dims = tuple(x.shape[1:]), math.prod(x.shape[1:])

        def draw(generator: Any) -> Tensor:
            direction = torch.randn(shape, generator=generator)
            radius = self.eps * float(torch.rand((), generator=generator)) ** (1.0 / dims)
            return direction * (radius / float(direction.norm(p=2).clamp_min(1e-12)))

        return model.clip(x + self.per_row(draw).to(x.device, x.dtype))

    def _step(
        self, adv: Tensor, x0: Tensor, grad: Tensor, state: Tensor | None, model: AttackModel, low: Tensor, high: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        unit = grad / _view(per_image_norm(grad, "l2").clamp_min(1e-12), grad)
        adv = adv + self.step_size * unit
        return model.clip(x0 + project(adv - x0, "l2", self.eps)), None


class MIFGSM(_IterativeAttack):
    """Momentum Iterative FGSM (Dong et al.), L-inf: sign steps along an accumulated, L1-normalised gradient.

    Args:
        eps: L-inf radius in the units of the bounds.
        steps: number of iterations.
        step_size: absolute step size; default eps / steps (the paper's alpha = eps / T).
        decay: momentum decay factor mu (1.0 in the paper).
        random_start: start from a uniform random point of the ball (off by default, as in the paper).
        early_stop, loss: as for `LinfPGD`.
    """

    name = "mifgsm"
    norm = "linf"

    def __init__(
        self,
        *,
        eps: float = 8 / 255,
        steps: int = 10,
        step_size: float | None = None,
        decay: float = 1.0,
        random_start: bool = False,
        early_stop: bool = True,
        loss: str = "ce",
        **common: Any,
    ) -> None:
        self.eps, self.steps, self.step_size = _iterative_params(eps, steps, step_size, 1.0)
        self.decay = positive_float("decay", decay, allow_zero=True)
        self.random_start = bool(random_start)
        self.early_stop = bool(early_stop)
        self.loss = choice("loss", loss, LOSSES)
        super().__init__(**common)

    def _init_state(self, x: Tensor) -> Tensor | None:
        return torch.zeros_like(x)

    def _step(
        self, adv: Tensor, x0: Tensor, grad: Tensor, state: Tensor | None, model: AttackModel, low: Tensor, high: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        assert state is not None
        scale = grad.abs().flatten(1).mean(1).clamp_min(1e-12)
        momentum = self.decay * state + grad / _view(scale, grad)
        step = momentum.sign().mul_(self.step_size)
        return torch.clamp(step.add_(adv), min=low, max=high), momentum


PGD = LinfPGD
"""Short alias, as in foolbox: `PGD` is `LinfPGD`."""

__all__ = ["FGSM", "L2PGD", "LOSSES", "MIFGSM", "PGD", "LinfPGD", "attack_loss", "loss_gradient"]
