"""The APGD iteration: the step-size schedule, the CE / DLR losses, EOT gradients and one run.

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020 (arXiv:2003.01690), Algorithm 1 and Section 3:

- the step is `z = P(x_k + eta * s(grad))` then `x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)
  (x_k - x_{k-1}))` with momentum `alpha = 0.75` (1 at the first step), `s` the sign (L-inf) or the
  L2-normalised gradient, `P` the projection onto the eps-ball and the bounds, and `eta = 2 eps` at
  the start;
- checkpoints `w_j = ceil(p_j N)` with `p_0 = 0`, `p_1 = 0.22`, `p_{j+1} = p_j + max(p_j - p_{j-1} -
  0.03, 0.06)`; at each checkpoint the step size is halved and the iterate restarts from the best
  point found so far if (1) the loss increased in fewer than `rho (w_j - w_{j-1})` of the steps since
  the last checkpoint, or (2) the step size was not reduced at the last checkpoint and the best loss
  has not improved since then;
- the DLR loss `-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3)` and its targeted version
  `-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)` (pi: the logits sorted in decreasing order).

For N = 100 the checkpoints (22, 41, 57, 70, 80, 87, 93, 99) are those of the reference code
(fra31/auto-attack). Where the reference code departs from the paper this module follows the paper:
condition 2 is also tested at the first checkpoint, condition 1 is strict (`<`), and the loss of
the point a restart moves to is the best loss.

With EOT (`eot_iter > 1`, for randomised models) the gradient is the mean over `eot_iter` forward
and backward passes; the loss and the success check use the last pass, as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeattack.attacks.whitebox.model import AttackModel, Tensor, torch
from edgeattack.attacks.whitebox.norms import per_image_norm
from edgeattack.errors import ConfigError

MOMENTUM = 0.75
FIRST_CHECKPOINT = 22
"""p_1 = 0.22, in hundredths."""
CHECKPOINT_DECAY = 3
CHECKPOINT_MIN_GAP = 6
LOSSES = ("ce", "dlr")


def apgd_checkpoint_fractions() -> tuple[float, ...]:
    """The paper's p_j (all j with p_j <= 1): 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99."""
    return tuple(h / 100 for h in _hundredths())


def _hundredths() -> list[int]:
    p = [0, FIRST_CHECKPOINT]
    while True:
        step = max(p[-1] - p[-2] - CHECKPOINT_DECAY, CHECKPOINT_MIN_GAP)
        if p[-1] + step > 100:
            return p
        p.append(p[-1] + step)


def apgd_checkpoints(steps: int) -> tuple[int, ...]:
    """The checkpoints `w_j = ceil(p_j * steps)` (w_0 = 0 first, repeated ones dropped), exact in integers."""
    seen: list[int] = []
    for h in _hundredths():
        w = -(-h * int(steps) // 100)
        if w not in seen:
            seen.append(w)
    return tuple(seen)


# ---------------------------------------------------------------------------------------------------
# losses
# ---------------------------------------------------------------------------------------------------
def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-image Difference of Logits Ratio (untargeted): `-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3 + 1e-12)`."""
    ordered = logits.sort(dim=1).values
    own = logits.gather(1, y[:, None]).squeeze(1)
    other = torch.where(logits.argmax(1) == y, ordered[:, -2], ordered[:, -1])
    return -(own - other) / (ordered[:, -1] - ordered[:, -3] + 1e-12)


def targeted_dlr_loss(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Per-image targeted DLR: `-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)`."""
    ordered = logits.sort(dim=1).values
    own = logits.gather(1, y[:, None]).squeeze(1)
    aim = logits.gather(1, target[:, None]).squeeze(1)
    return -(own - aim) / (ordered[:, -1] - 0.5 * (ordered[:, -3] + ordered[:, -4]) + 1e-12)


def min_classes(loss: str, targeted: bool) -> int:
    """The fewest classes a loss is defined for: DLR reads the 3rd (targeted: 4th) largest logit."""
    if loss == "dlr":
        return 4 if targeted else 3
    return 2


@dataclass(frozen=True)
class Objective:
    """What one APGD run ascends and when it has succeeded, for the rows of a batch.

    `loss` "ce" or "dlr"; with `aim` (the class each row's loss pulls towards) the targeted version
    (-CE of the aim, targeted DLR). Success is reaching `aim` when `success_is_aim` (a targeted
    attack), else leaving the label `y` (AutoAttack's APGD-T: targeted losses, untargeted success).
    """

    loss: str
    y: Tensor
    aim: Tensor | None = None
    success_is_aim: bool = False

    def value(self, logits: Tensor, rows: Tensor) -> Tensor:
        y = self.y[rows]
        functional = torch.nn.functional
        if self.aim is None:
            return functional.cross_entropy(logits, y, reduction="none") if self.loss == "ce" else dlr_loss(logits, y)
        aim = self.aim[rows]
        if self.loss == "ce":
            return -functional.cross_entropy(logits, aim, reduction="none")
        return targeted_dlr_loss(logits, y, aim)

    def success(self, logits: Tensor, rows: Tensor) -> Tensor:
        pred = logits.argmax(1)
        if self.success_is_aim and self.aim is not None:
            return pred == self.aim[rows]
        return pred != self.y[rows]


def differentiable_logits(model: AttackModel, x: Tensor) -> Tensor:
    """`model(x)` for an `x` that requires grad; ConfigError unless the logits are a tensor carrying a gradient."""
    logits = model(x)
    if not torch.is_tensor(logits):
        raise ConfigError(
            f"the model returned {type(logits).__name__}, not a torch tensor: white-box attacks need a "
            "differentiable torch model (for an ONNX or TensorRT engine use a black-box attack, e.g. square)"
        )
    if not logits.requires_grad:
        raise ConfigError(
            "the model's logits carry no gradient with respect to the input (computed under no_grad, "
            "detached, or outside torch): give the torch module itself (the fake-quant twin for int8), "
            "or use a black-box attack on the engine"
        )
    return logits


def require_gradients(model: AttackModel, x: Tensor) -> None:
    """ConfigError unless the model's logits for the first image of `x` carry an input gradient."""
    with torch.enable_grad():
        differentiable_logits(model, x[:1].detach().requires_grad_(True))


def eot_gradient(
    model: AttackModel, x: Tensor, objective: Objective, rows: Tensor, eot_iter: int = 1
) -> tuple[Tensor, Tensor, Tensor]:
    """(mean input gradient of the per-image loss over `eot_iter` passes, loss, logits) at `x`."""
    total = torch.zeros_like(x)
    loss = logits = x
    for _ in range(eot_iter):
        xg = x.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = differentiable_logits(model, xg).float()
            loss = objective.value(logits, rows)
            (grad,) = torch.autograd.grad(loss.sum(), xg)
        total += grad
    return total / eot_iter, loss.detach(), logits.detach()


# ---------------------------------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------------------------------
def project_ball(adv: Tensor, x: Tensor, eps: float, norm: str, bounds: tuple[float, float]) -> Tensor:
    """`adv` projected onto the `norm` ball of radius eps around `x`, then clipped to `bounds`."""
    if norm == "linf":
        adv = torch.min(torch.max(adv, x - eps), x + eps)
    else:
        delta = adv - x
        scale = (eps / per_image_norm(delta, "l2").clamp_min(1e-12)).clamp(max=1.0)
        adv = x + delta * scale.view(-1, *([1] * (x.dim() - 1)))
    return adv.clamp(bounds[0], bounds[1])


def _direction(grad: Tensor, norm: str) -> Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / (per_image_norm(grad, "l2").view(-1, *([1] * (grad.dim() - 1))) + 1e-12)


def step_size_halvings(
    increases: Tensor, window: int, rho: float, reduced_last: Tensor, f_max: Tensor, f_max_last: Tensor
) -> Tensor:
    """Which images halve their step size at a checkpoint (the paper's two conditions).

    (1) the loss increased in fewer than `rho * window` of the `window` steps since the last
    checkpoint; (2) the step size was not halved at the last checkpoint (`reduced_last` False) and
    the best loss `f_max` is no higher than it was there (`f_max_last`).
    """
    return (increases < rho * window) | (~reduced_last & (f_max <= f_max_last))


@dataclass
class RunOutcome:
    """Per row: `adversarial` (the first adversarial iterate where `found`, else the best-loss point),
    the best loss, and how many times the step size was halved."""

    adversarial: Tensor
    found: Tensor
    loss: Tensor
    halvings: Tensor


def apgd_run(
    model: AttackModel,
    x: Tensor,
    start: Tensor,
    objective: Objective,
    rows: Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    rho: float = 0.75,
    eot_iter: int = 1,
    early_stop: bool = True,
) -> RunOutcome:
    """One APGD run from `start` on images `x` (rows `rows` of the objective's batch); see the module doc.

    With `early_stop` an image leaves the run at its first adversarial iterate (its success cannot
    be undone, so robust accuracy is unchanged); otherwise every image runs all steps and keeps its
    last adversarial iterate, as the reference does.
    """
    bounds = model.bounds
    x_cur = project_ball(start, x, eps, norm, bounds)
    grad, loss, logits = eot_gradient(model, x_cur, objective, rows, eot_iter)
    found = objective.success(logits, rows)
    adv = x_cur.clone()
    x_max, f_max, g_max = x_cur.clone(), loss.clone(), grad.clone()
    x_prev, f_prev = x_cur.clone(), loss.clone()
    eta = torch.full_like(loss, 2.0 * eps)
    increases = torch.zeros_like(loss)
    reduced_last = torch.zeros_like(found)
    f_max_last = f_max.clone()
    checkpoints = set(apgd_checkpoints(steps)[1:])
    window_start = 0
    live = ~found if early_stop else torch.ones_like(found)
    shape = (-1, *([1] * (x.dim() - 1)))
    for k in range(steps):
        idx = live.nonzero().flatten()
        if idx.numel() == 0:
            break
        xc, x0 = x_cur[idx], x[idx]
        z = project_ball(xc + eta[idx].view(shape) * _direction(grad[idx], norm), x0, eps, norm, bounds)
        alpha = 1.0 if k == 0 else MOMENTUM
        x_new = project_ball(xc + alpha * (z - xc) + (1.0 - alpha) * (xc - x_prev[idx]), x0, eps, norm, bounds)
        x_prev[idx] = xc
        x_cur[idx] = x_new
        g_new, l_new, logits = eot_gradient(model, x_new, objective, rows[idx], eot_iter)
        grad[idx] = g_new
        increases[idx] += (l_new > f_prev[idx]).float()
        f_prev[idx] = l_new
        better = l_new > f_max[idx]
        up = idx[better]
        x_max[up], f_max[up], g_max[up] = x_new[better], l_new[better], g_new[better]
        hit = objective.success(logits, rows[idx])
        adv[idx[hit]] = x_new[hit]
        found[idx[hit]] = True
        if early_stop:
            live[idx[hit]] = False
        if k + 1 in checkpoints:
            reduce = step_size_halvings(increases, k + 1 - window_start, rho, reduced_last, f_max, f_max_last)
            eta[reduce] /= 2.0
            x_cur[reduce], grad[reduce], f_prev[reduce] = x_max[reduce], g_max[reduce], f_max[reduce]
            reduced_last, f_max_last = reduce, f_max.clone()
            increases.zero_()
            window_start = k + 1
    adversarial = torch.where(found.view(shape), adv, x_max)
    halvings = torch.log2(2.0 * eps / eta).round().long()
    return RunOutcome(adversarial=adversarial, found=found, loss=f_max, halvings=halvings)


__all__ = [
    "LOSSES",
    "MOMENTUM",
    "Objective",
    "RunOutcome",
    "apgd_checkpoint_fractions",
    "apgd_checkpoints",
    "apgd_run",
    "differentiable_logits",
    "dlr_loss",
    "eot_gradient",
    "min_classes",
    "project_ball",
    "require_gradients",
    "step_size_halvings",
    "targeted_dlr_loss",
]
