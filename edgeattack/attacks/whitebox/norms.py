"""Norms, eps-ball projections and 1/255-grid rounding shared by the attacks (per image, on tensors)."""

from __future__ import annotations

from edgeattack.attacks.whitebox.model import Tensor, torch

NORMS = ("linf", "l2")
GRID_LEVELS = 255


def per_image_norm(delta: Tensor, norm: str) -> Tensor:
    """Per-image L-inf or L2 norm of a [N,...] tensor."""
    flat = delta.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(p=2, dim=1)


def project(delta: Tensor, norm: str, eps: float) -> Tensor:
    """`delta` projected onto the `norm` ball of radius `eps` (per image)."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    norms = per_image_norm(delta, "l2").clamp_min(1e-12)
    factor = (eps / norms).clamp(max=1.0)
    return delta * factor.view(-1, *([1] * (delta.dim() - 1)))


def quantize_within(adv: Tensor, clean: Tensor, norm: str, eps: float | None, bounds: tuple[float, float]) -> Tensor:
    """Round `adv` to the 1/255 grid; for L-inf, round to the neighbour that stays in the eps-ball.

    Nearest rounding can leave the L-inf ball by half a grid step when the clean image is off the
    grid; choosing the other neighbour there keeps the guarantee whenever 2*eps >= 1/255. For L2 the
    nearest neighbour is taken (the realised norms are reported in the output).
    """
    scaled = adv * GRID_LEVELS
    q = torch.round(scaled) / GRID_LEVELS
    if norm == "linf" and eps is not None:
        low = torch.maximum(clean - eps, torch.full_like(clean, bounds[0]))
        high = torch.minimum(clean + eps, torch.full_like(clean, bounds[1]))
        tol = 1e-6
        q = torch.where(q < low - tol, torch.ceil(scaled) / GRID_LEVELS, q)
        q = torch.where(q > high + tol, torch.floor(scaled) / GRID_LEVELS, q)
    return q.clamp(bounds[0], bounds[1])


__all__ = [
    "GRID_LEVELS",
    "NORMS",
    "per_image_norm",
    "project",
    "quantize_within",
]
