"""Square Attack on the torch model, as AutoAttack runs it: score-based random search, no gradients.

Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box adversarial
attack via random search", ECCV 2020 (arXiv:1912.00049), with AutoAttack's settings: p_init 0.8,
5000 queries, the margin loss, one restart, and the fraction-of-pixels schedule *not* rescaled to
the query budget (`resc_schedule=False`: p halves at iterations 10, 50, 200, 500, 1000, 2000, 4000,
6000 and 8000).

- L-inf: vertical-stripe start (+-eps per column and channel); each iteration sets one random
  s x s square of the perturbation to +-eps per channel;
- L2: a start of 5 x 5 "meta pseudo-Gaussian" blocks of random sign at norm eps; each iteration
  moves the mass of a second random square into the first, adds a fresh pseudo-Gaussian bump there
  and rescales the whole perturbation to norm eps.

A candidate replaces an image's best point when it lowers the loss or is adversarial; an image
stops once it is adversarial. Why not the black-box `SquareAttack` through an adapter: it draws
from one generator shared by the images of a chunk (the result of an image would depend on which
others are still being attacked) and rescales the schedule to the budget. This one draws every
square, sign and start per image from a counter-based stream of (seed, dataset index), and reuses
the black-box module's schedule (`p_selection`) and pseudo-Gaussian bump (`meta_pseudo_gaussian`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgeattack.attacks.blackbox.square import meta_pseudo_gaussian, p_selection
from edgeattack.attacks.whitebox.apgd import default_eps
from edgeattack.attacks.whitebox.base import WhiteBoxAttack
from edgeattack.attacks.whitebox.model import AttackModel, Tensor, torch
from edgeattack.attacks.whitebox.norms import per_image_norm
from edgeattack.attacks.whitebox.outputs import RunResult
from edgeattack.attacks.whitebox.robust_checks import Perturbed, check_classes, threat_norm, view_rows
from edgeattack.attacks.whitebox.rowrandom import row_keys, row_uniform
from edgeattack.attacks.whitebox.validation import choice, positive_float, positive_int
from edgeattack.errors import ConfigError

SQUARE_LOSSES = ("margin", "ce")
_SCHEDULE_ITERS = 10000


class Square(WhiteBoxAttack):
    """Square Attack (AutoAttack's configuration) on a torch model; queries only its logits.

    Args:
        eps: radius of the `norm` ball (default 8/255 L-inf, 0.5 L2).
        norm: "linf" or "l2".
        n_queries: iterations (one query each, plus one for the start) per restart (AutoAttack: 5000).
        p_init: initial fraction of pixels in a square (AutoAttack: 0.8).
        n_restarts: restarts on the images still robust.
        loss: "margin" (label logit minus the best other; AutoAttack's) or "ce".
    """

    name = "square"

    def __init__(
        self,
        *,
        eps: float | None = None,
        norm: str = "linf",
        n_queries: int = 5000,
        p_init: float = 0.8,
        n_restarts: int = 1,
        loss: str = "margin",
        **common: Any,
    ) -> None:
        self.norm = threat_norm("Square", norm)
        self.eps = default_eps(eps, self.norm)
        self.n_queries = positive_int("n_queries", n_queries)
        self.p_init = positive_float("p_init", p_init)
        if self.p_init > 1:
            raise ConfigError(f"p_init must be in (0, 1], got {p_init!r}")
        self.n_restarts = positive_int("n_restarts", n_restarts)
        self.loss = choice("loss", loss, SQUARE_LOSSES)
        super().__init__(**common)

    def run(self, model: AttackModel, x: Tensor, y: Tensor, *, target: Tensor | None) -> RunResult:
        return RunResult(adversarial=self.perturb(model, x, y, target=target, ids=self._row_ids).adversarial)

    def perturb(
        self, model: AttackModel, x: Tensor, y: Tensor, *, target: Tensor | None = None, ids: Any, stream: int = 0
    ) -> Perturbed:
        """The search on batch `x` (dataset indices `ids`); images the model already gets wrong are left as they are."""
        with torch.no_grad():
            clean = model(x)
            check_classes("square", int(clean.shape[1]))
            pred = clean.argmax(1)
            eligible = pred != target if target is not None else pred == y
            best = x.clone()
            best_margin = torch.full((x.shape[0],), float("inf"), device=x.device)
            found = torch.zeros_like(eligible)
            ids = np.asarray(ids, dtype=np.int64)
            for restart in range(self.n_restarts):
                rows = (eligible & ~found).nonzero().flatten()
                if rows.numel() == 0:
                    break
                keys = row_keys(self.seed, ids[rows.cpu().numpy()], stream * 1009 + restart)
                aim = y[rows] if target is None else target[rows]
                adv, margin = self._search(model, x[rows], aim, target is not None, keys)
                better = margin < best_margin[rows]
                best[rows[better]], best_margin[rows[better]] = adv[better], margin[better]
                found[rows[margin < 0]] = True
        return Perturbed(adversarial=best, found=found)

    # the search ----------------------------------------------------------------------------------
    def _margin_and_loss(self, model: AttackModel, x: Tensor, cls: Tensor, targeted: bool) -> tuple[Tensor, Tensor]:
        logits = model(x).float()
        rows = torch.arange(x.shape[0], device=x.device)
        own = logits[rows, cls]
        other = logits.scatter(1, cls[:, None], float("-inf")).amax(1)
        margin = other - own if targeted else own - other
        if self.loss == "margin":
            return margin, margin
        xent = torch.nn.functional.cross_entropy(logits, cls, reduction="none")
        return margin, (xent if targeted else -xent)

    def _search(
        self, model: AttackModel, x: Tensor, cls: Tensor, targeted: bool, keys: np.ndarray
    ) -> tuple[Tensor, Tensor]:
        """One run on `x` (the images to attack); (best points, their margins: negative = adversarial)."""
        c = x.shape[1]
        x_best = model.clip(x + self._init_delta(x, keys))
        margin, loss = self._margin_and_loss(model, x_best, cls, targeted)
        for i in range(self.n_queries):
            idx = (margin > 0).nonzero().flatten()
            if idx.numel() == 0:
                break
            p = float(p_selection(self.p_init, np.array([min(i, _SCHEDULE_ITERS)]), np.array([_SCHEDULE_ITERS]))[0])
            u = row_uniform(keys[idx.cpu().numpy()], i + 1, c + 6)
            if self.norm == "linf":
                x_new = self._linf_candidate(x[idx], x_best[idx], p, u, model)
            else:
                x_new = self._l2_candidate(x[idx], x_best[idx], p, u, model)
            m_new, l_new = self._margin_and_loss(model, x_new, cls[idx], targeted)
            improved = (l_new < loss[idx]) | (m_new <= 0)
            loss[idx] = torch.where(l_new < loss[idx], l_new, loss[idx])
            keep = idx[improved]
            margin[keep] = m_new[improved]
            x_best[keep] = x_new[improved]
        return x_best, margin

    def _side(self, p: float, h: int, w: int, minimum: int) -> int:
        s = max(round(math.sqrt(p * h * w)), minimum)
        if self.norm == "l2" and s % 2 == 0:
            s += 1
        return min(s, h, w)

    @staticmethod
    def _window(u_h: np.ndarray, u_w: np.ndarray, s: int, h: int, w: int, device: Any) -> Tensor:
        """[n, 1, h, w] masks of an s x s window per image at uniform positions (`u` in [0, 1))."""
        top = torch.from_numpy(np.floor(u_h * (h - s)).astype(np.int64)).to(device)
        left = torch.from_numpy(np.floor(u_w * (w - s)).astype(np.int64)).to(device)
        rows = torch.arange(h, device=device).view(1, h, 1)
        cols = torch.arange(w, device=device).view(1, 1, w)
        inside = (rows >= top.view(-1, 1, 1)) & (rows < (top + s).view(-1, 1, 1))
        inside = inside & (cols >= left.view(-1, 1, 1)) & (cols < (left + s).view(-1, 1, 1))
        return inside.unsqueeze(1)

    def _signs(self, u: np.ndarray, like: Tensor) -> Tensor:
        return torch.from_numpy(np.where(u < 0.5, -1.0, 1.0)).to(like.device, like.dtype)

    def _init_delta(self, x: Tensor, keys: np.ndarray) -> Tensor:
        n, c, h, w = x.shape
        if self.norm == "linf":
            u = row_uniform(keys, 0, c * w).reshape(n, c, 1, w)
            return self.eps * self._signs(u, x)
        s = max(h // 5, 1)
        top, left = max((h - s * 5) // 2, 0), max((w - s * 5) // 2, 0)
        blocks_h, blocks_w = (h - top) // s, (w - left) // s
        u = row_uniform(keys, 0, blocks_h * blocks_w * (c + 1)).reshape(n, blocks_h * blocks_w, c + 1)
        bump = torch.from_numpy(meta_pseudo_gaussian(s)).to(x.device, x.dtype)
        delta = torch.zeros_like(x)
        for block in range(blocks_h * blocks_w):
            i, j = divmod(block, blocks_w)
            flip = torch.from_numpy(u[:, block, c] < 0.5).to(x.device).view(n, 1, 1, 1)
            shaped = torch.where(flip, bump.T, bump)
            vh, vw = top + i * s, left + j * s
            delta[:, :, vh : vh + s, vw : vw + s] += shaped * self._signs(u[:, block, :c], x).view(n, c, 1, 1)
        return delta * view_rows(self.eps / (per_image_norm(delta, "l2") + 1e-12), x)

    def _linf_candidate(self, x: Tensor, x_best: Tensor, p: float, u: np.ndarray, model: AttackModel) -> Tensor:
        n, c, h, w = x.shape
        s = self._side(p, h, w, 1)
        mask = self._window(u[:, 0], u[:, 1], s, h, w, x.device)
        corner = x + self.eps * self._signs(u[:, 2 : 2 + c], x).view(n, c, 1, 1)
        return model.clip(torch.where(mask, corner, x_best))

    def _l2_candidate(self, x: Tensor, x_best: Tensor, p: float, u: np.ndarray, model: AttackModel) -> Tensor:
        n, c, h, w = x.shape
        s = self._side(p, h, w, 3)
        delta = x_best - x
        first = self._window(u[:, 0], u[:, 1], s, h, w, x.device)
        second = self._window(u[:, 2], u[:, 3], s, h, w, x.device)
        in_first = first.expand(n, c, h, w)
        window = delta[in_first].view(n, c, s, s)
        norm_first = window.pow(2).sum((2, 3), keepdim=True).sqrt()
        norm_image = view_rows(per_image_norm(delta, "l2"), delta)
        norm_both = (delta * (first | second)).pow(2).sum((2, 3), keepdim=True).sqrt()
        bump = torch.from_numpy(meta_pseudo_gaussian(s)).to(x.device, x.dtype)
        flip = torch.from_numpy(u[:, 4 + c] < 0.5).to(x.device).view(n, 1, 1, 1)
        fresh = torch.where(flip, bump.T, bump) * self._signs(u[:, 4 : 4 + c], x).view(n, c, 1, 1)
        fresh = fresh + window / (1e-12 + norm_first)
        mass = ((self.eps**2 - norm_image**2).clamp_min(0.0) / c + norm_both**2).sqrt()
        fresh = fresh / (1e-12 + fresh.pow(2).sum((2, 3), keepdim=True).sqrt()) * mass
        delta = delta.masked_fill(second.expand(n, c, h, w), 0.0)
        delta = delta.masked_scatter(in_first, fresh)
        return model.clip(x + delta * view_rows(self.eps / (per_image_norm(delta, "l2") + 1e-12), x))


__all__ = ["SQUARE_LOSSES", "Square"]
