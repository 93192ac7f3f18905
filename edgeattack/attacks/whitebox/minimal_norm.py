"""Minimal-norm attacks: Carlini-Wagner L2 and DeepFool (L2, L-inf).

- Carlini & Wagner, "Towards Evaluating the Robustness of Neural Networks", IEEE S&P 2017: the L2
  attack in tanh space, `min ||x' - x||_2^2 + c * max(z_y - max_{i!=y} z_i + kappa, 0)` with Adam,
  and a binary search over `c` per image (x10 until a success, then bisection).
- Moosavi-Dezfooli, Fawzi & Frossard, "DeepFool: a simple and accurate method to fool deep neural
  networks", CVPR 2016: linearise, step to the nearest linearised boundary among the top
  candidate classes (L2: `|f_k| / ||w_k||_2`, L-inf: `|f_k| / ||w_k||_1`), repeat until the label
  changes; the total step is scaled by `1 + overshoot`.

The per-image result is the smallest adversarial perturbation found (its norm is the result:
`AttackOutput.l2()` / `.linf()`); an image for which none was found keeps the clean image. With
`eps` given, success means a norm within eps: a perturbation found beyond eps is dropped (the
image keeps the clean image), so the artifact declares and keeps its budget. Perturbations are
measured from the true label (an image the model gets wrong when clean is left as it is).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from edgeattack.attacks.whitebox.apgd_core import differentiable_logits, require_gradients
from edgeattack.attacks.whitebox.base import WhiteBoxAttack
from edgeattack.attacks.whitebox.model import AttackModel, Tensor, torch
from edgeattack.attacks.whitebox.norms import per_image_norm
from edgeattack.attacks.whitebox.outputs import RunResult
from edgeattack.attacks.whitebox.robust_checks import check_classes, threat_norm, view_rows
from edgeattack.attacks.whitebox.validation import positive_float, positive_int
from edgeattack.errors import ConfigError

logger = logging.getLogger(__name__)


class _MinimalNorm(WhiteBoxAttack):
    """Shared ending: keep results within eps (when given) and log the norms found."""

    def _finish(self, x: Tensor, adv: Tensor, found: Tensor) -> RunResult:
        norms = per_image_norm(adv - x, self.norm)
        if self.eps is not None:
            beyond = found & (norms > self.eps)
            if bool(beyond.any()):
                logger.info(
                    "%s: %d minimal perturbations exceed eps %.4g (median %.4g); those images keep the clean image",
                    self.name, int(beyond.sum()), self.eps, float(norms[beyond].median()),
                )
            found = found & ~beyond
        if bool(found.any()):
            logger.debug("%s: median %s norm of the %d perturbations found: %.4g",
                         self.name, self.norm, int(found.sum()), float(norms[found].median()))
        return RunResult(adversarial=torch.where(view_rows(found, x), adv, x))


class CarliniWagnerL2(_MinimalNorm):
    """Carlini & Wagner's L2 attack with a binary search over the constant c.

    Args:
        eps: None (minimal norm) or an L2 radius results must be within.
        binary_search_steps: rounds of the search over c (9 in the paper).
        steps: Adam steps per round.
        learning_rate: Adam's step size (0.01).
        initial_const: the first c (1e-3).
        confidence: kappa, the margin the adversarial logit must clear (0).
        abort_early: end a round for an image whose loss has not fallen by 0.01 % over a tenth of the steps.
    """

    name = "cw-l2"
    norm = "l2"

    def __init__(
        self,
        *,
        eps: float | None = None,
        binary_search_steps: int = 9,
        steps: int = 1000,
        learning_rate: float = 0.01,
        initial_const: float = 1e-3,
        confidence: float = 0.0,
        abort_early: bool = True,
        **common: Any,
    ) -> None:
        self.eps = None if eps is None else positive_float("eps", eps)
        self.binary_search_steps = positive_int("binary_search_steps", binary_search_steps)
        self.steps = positive_int("steps", steps)
        self.learning_rate = positive_float("learning_rate", learning_rate)
        self.initial_const = positive_float("initial_const", initial_const)
        self.confidence = positive_float("confidence", confidence, allow_zero=True)
        self.abort_early = bool(abort_early)
        super().__init__(**common)

    def run(self, model: AttackModel, x: Tensor, y: Tensor, *, target: Tensor | None) -> RunResult:
        low, high = model.bounds
        require_gradients(model, x)
        with torch.no_grad():
            clean = model(x)
        check_classes(self.name, int(clean.shape[1]))
        cls = y if target is None else target
        eligible = clean.argmax(1) == y if target is None else clean.argmax(1) != target
        w0 = torch.atanh(((x - low) / (high - low) * 2 - 1).clamp(-1 + 1e-6, 1 - 1e-6))
        n = x.shape[0]
        const = torch.full((n,), self.initial_const, device=x.device)
        lower = torch.zeros(n, device=x.device)
        upper = torch.full((n,), float("inf"), device=x.device)
        best = x.clone()
        best_norm = torch.full((n,), float("inf"), device=x.device)
        check_every = max(math.ceil(self.steps / 10), 1)
        for _ in range(self.binary_search_steps):
            shift = torch.zeros_like(x, requires_grad=True)
            optimizer = torch.optim.Adam([shift], lr=self.learning_rate)
            succeeded = torch.zeros(n, dtype=torch.bool, device=x.device)
            stopped = ~eligible
            previous = torch.full((n,), float("inf"), device=x.device)
            for step in range(self.steps):
                with torch.enable_grad():
                    adv = low + (torch.tanh(w0 + shift) + 1) / 2 * (high - low)
                    logits = differentiable_logits(model, adv).float()
                    distance = (adv - x).flatten(1).pow(2).sum(1)
                    margin = self._margin(logits, cls, target is not None)
                    loss = distance + const * margin.clamp_min(0.0)
                    optimizer.zero_grad()
                    loss.sum().backward()
                hit = (self._margin(logits.detach(), cls, target is not None) < 0) & ~stopped
                norms = distance.detach().sqrt()
                better = hit & (norms < best_norm)
                best[better], best_norm[better] = adv.detach()[better], norms[better]
                succeeded |= hit
                if self.abort_early and step % check_every == 0:
                    stalled = loss.detach() > previous * 0.9999
                    stopped = stopped | stalled
                    previous = torch.where(stalled, previous, loss.detach())
                if bool(stopped.all()):
                    break
                frozen = shift.detach()[stopped].clone()
                optimizer.step()
                with torch.no_grad():
                    shift[stopped] = frozen
            upper = torch.where(succeeded, torch.minimum(upper, const), upper)
            lower = torch.where(succeeded, lower, torch.maximum(lower, const))
            const = torch.where(torch.isfinite(upper), (lower + upper) / 2, const * 10)
        return self._finish(x, best, torch.isfinite(best_norm))

    def _margin(self, logits: Tensor, cls: Tensor, targeted: bool) -> Tensor:
        """Untargeted: z_y - max_other + kappa; targeted: max_other - z_t + kappa (negative = adversarial)."""
        own = logits.gather(1, cls[:, None]).squeeze(1)
        other = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
        return (other - own if targeted else own - other) + self.confidence


class DeepFool(_MinimalNorm):
    """DeepFool (Moosavi-Dezfooli et al. 2016), L2 or L-inf, from the true label.

    Args:
        eps: None (minimal norm) or a radius results must be within.
        norm: "l2" or "linf".
        steps: the most linearisation steps per image (50).
        overshoot: the total step is scaled by 1 + overshoot (0.02).
        num_candidates: the classes considered: the label and the top others by clean logit (10).
    """

    name = "deepfool"
    supports_targeted = False

    def __init__(
        self,
        *,
        eps: float | None = None,
        norm: str = "l2",
        steps: int = 50,
        overshoot: float = 0.02,
        num_candidates: int = 10,
        **common: Any,
    ) -> None:
        self.norm = threat_norm("DeepFool", norm)
        self.eps = None if eps is None else positive_float("eps", eps)
        self.steps = positive_int("steps", steps)
        self.overshoot = positive_float("overshoot", overshoot, allow_zero=True)
        self.num_candidates = positive_int("num_candidates", num_candidates)
        if self.num_candidates < 2:
            raise ConfigError("num_candidates must be at least 2 (the label and one other class)")
        super().__init__(**common)

    def run(self, model: AttackModel, x: Tensor, y: Tensor, *, target: Tensor | None) -> RunResult:
        require_gradients(model, x)
        with torch.no_grad():
            clean = model(x)
        check_classes(self.name, int(clean.shape[1]))
        k = min(self.num_candidates, int(clean.shape[1]))
        others = clean.scatter(1, y[:, None], float("-inf")).topk(k - 1, dim=1).indices
        total = torch.zeros_like(x)
        found = clean.argmax(1) != y
        live = ~found
        eligible = live.clone()
        for _ in range(self.steps):
            idx = live.nonzero().flatten()
            if idx.numel() == 0:
                break
            xa = model.clip(x[idx] + (1 + self.overshoot) * total[idx]).detach().requires_grad_(True)
            with torch.enable_grad():
                logits = differentiable_logits(model, xa).float()
                rows = torch.arange(idx.numel(), device=x.device)
                diffs = logits.gather(1, others[idx]) - logits[rows, y[idx]].unsqueeze(1)
                flipped = logits.argmax(1) != y[idx]
                grads = [
                    torch.autograd.grad(diffs[:, j].sum(), xa, retain_graph=j < k - 2)[0] for j in range(k - 1)
                ]
            found[idx[flipped]] = True
            live[idx[flipped]] = False
            still = ~flipped
            if not bool(still.any()):
                break
            w = torch.stack(grads, 1)[still]
            f = diffs.detach()[still]
            dual = w.flatten(2).abs().sum(2) if self.norm == "linf" else w.flatten(2).norm(dim=2)
            distance = f.abs() / (dual + 1e-8)
            nearest = distance.argmin(1)
            pick = torch.arange(w.shape[0], device=x.device)
            wk, size = w[pick, nearest], distance[pick, nearest] + 1e-4
            if self.norm == "linf":
                step = view_rows(size, wk) * wk.sign()
            else:
                step = view_rows(size / (dual[pick, nearest] + 1e-8), wk) * wk
            total[idx[still]] += step
        adv = model.clip(x + (1 + self.overshoot) * total)
        with torch.no_grad():
            found = eligible & (model(adv).argmax(1) != y)
        return self._finish(x, adv, found)


__all__ = ["CarliniWagnerL2", "DeepFool"]
