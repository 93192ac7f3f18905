"""FAB's projection: the smallest step onto a hyperplane that stays inside the box of valid images.

Croce & Hein, "Minimally distorted adversarial examples with a fast adaptive boundary attack",
ICML 2020 (arXiv:1907.02044), Section 3.1: for a point `t`, the hyperplane `{z : w.z = b}` and the
box `[0, 1]^d`, the step `d` of least L-inf (or L2) norm with `w.(t + d) = b` and `t + d` in the
box, or, when the hyperplane does not meet the box, the step to the box's point closest to it. The
solution sorts the coordinates by the point where each reaches a box face and finds the active set
by bisection, for a whole batch at once. This is the algorithm of the reference code
(fra31/auto-attack, `fab_projections.py`, MIT licence), restated; `project_onto_hyperplane`
maps other bounds than [0, 1] onto the unit box and back.
"""

from __future__ import annotations

import math

from edgeattack.attacks.whitebox.model import Tensor, torch


def projection_linf(t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Least-L-inf steps `d` [n, d] from points `t` [n, d] in [0,1]^d onto `w.z = b` within the unit box."""
    w, b = w.clone(), b.clone()
    sign = 2 * ((w * t).sum(1) - b >= 0) - 1
    w.mul_(sign.unsqueeze(1))
    b.mul_(sign)
    a = (w < 0).float()
    d = (a - t) * (w != 0).float()
    p = a - t * (2 * a - 1)
    order = torch.argsort(p, dim=1)
    b = b - (w * t).sum(1)
    b0 = (w * d).sum(1)
    reversed_order = order.flip((1,))
    ws = w.gather(1, reversed_order)
    bs2 = -ws * d.gather(1, reversed_order)
    s = torch.cumsum(ws.abs(), dim=1)
    sb = torch.cumsum(bs2, dim=1) + b0.unsqueeze(1)
    b2 = sb[:, -1] - s[:, -1] * p.gather(1, order[:, 0:1]).squeeze(1)
    c_l = b - b2 > 0
    c2 = (b - b0 > 0) & (~c_l)
    lb = torch.zeros(int(c2.sum()), device=t.device)
    ub = torch.full_like(lb, w.shape[1] - 1)
    order_, sb_, s_, p_, b_ = order[c2], sb[c2], s[c2], p[c2], b[c2]
    for _ in range(math.ceil(math.log2(w.shape[1]))):
        middle = torch.floor((lb + ub) / 2)
        k = middle.long().unsqueeze(1)
        current = order_.gather(1, order_.size(1) - 1 - k)
        b2 = (sb_.gather(1, k) - s_.gather(1, k) * p_.gather(1, current)).squeeze(1)
        c = b_ - b2 > 0
        lb = torch.where(c, middle, lb)
        ub = torch.where(c, ub, middle)
    lb = lb.long()
    if c_l.any():
        lmbd = torch.clamp_min((b[c_l] - sb[c_l, -1]) / (-s[c_l, -1]), min=0).unsqueeze(-1)
        d[c_l] = (2 * a[c_l] - 1) * lmbd
    lmbd = torch.clamp_min((b[c2] - sb[c2, lb]) / (-s[c2, lb]), min=0).unsqueeze(-1)
    d[c2] = torch.min(lmbd, d[c2]) * a[c2] + torch.max(-lmbd, d[c2]) * (1 - a[c2])
    return d * (w != 0).float()


def projection_l2(t: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """Least-L2 steps `d` [n, d] from points `t` [n, d] in [0,1]^d onto `w.z = b` within the unit box."""
    w = w.clone()
    c = (w * t).sum(1) - b
    sign = 2 * (c >= 0) - 1
    w.mul_(sign.unsqueeze(1))
    c = c * sign
    r = torch.max(t / w, (t - 1) / w).clamp(min=-1e12, max=1e12)
    r.masked_fill_(w.abs() < 1e-8, 1e12)
    r[r == -1e12] *= -1
    rs, order = torch.sort(r, dim=1)
    rs2 = torch.nn.functional.pad(rs[:, 1:], (0, 1))
    rs.masked_fill_(rs == 1e12, 0)
    rs2.masked_fill_(rs2 == 1e12, 0)
    w3s = (w**2).gather(1, order)
    w5 = w3s.sum(dim=1, keepdim=True)
    ws = w5 - torch.cumsum(w3s, dim=1)
    d = -(r * w)
    d.mul_((w.abs() > 1e-8).float())
    s = torch.cat((-w5 * rs[:, 0:1], torch.cumsum((-rs2 + rs) * ws, dim=1) - w5 * rs[:, 0:1]), 1)
    c4 = s[:, 0] + c < 0
    c3 = (d * w).sum(dim=1) + c > 0
    c2 = ~(c4 | c3)
    lb = torch.zeros(int(c2.sum()), device=t.device)
    ub = torch.full_like(lb, w.shape[1] - 1)
    s_, c_ = s[c2], c[c2]
    for _ in range(math.ceil(math.log2(w.shape[1]))):
        middle = torch.floor((lb + ub) / 2)
        k = middle.long().unsqueeze(1)
        above = s_.gather(1, k).squeeze(1) + c_ > 0
        lb = torch.where(above, middle, lb)
        ub = torch.where(above, ub, middle)
    lb = lb.long()
    if c4.any():
        alpha = c[c4] / w5[c4].squeeze(-1)
        d[c4] = -alpha.unsqueeze(-1) * w[c4]
    if c2.any():
        alpha = (s[c2, lb] + c[c2]) / ws[c2, lb] + rs[c2, lb]
        alpha[ws[c2, lb] == 0] = 0
        c5 = (alpha.unsqueeze(-1) > r[c2]).float()
        d[c2] = d[c2] * c5 - alpha.unsqueeze(-1) * w[c2] * (1 - c5)
    return d * (w.abs() > 1e-8).float()


def project_onto_hyperplane(t: Tensor, w: Tensor, b: Tensor, norm: str, bounds: tuple[float, float]) -> Tensor:
    """Least-`norm` steps from points `t` [n, d] in `bounds` onto `w.z = b` within the box `bounds`.

    The box is mapped onto [0, 1]: `z = low + scale * u` turns the hyperplane into
    `(scale w).u = b - low * sum(w)`, and a step `du` back into `scale * du`.
    """
    low, high = bounds
    scale = high - low
    u = (t - low) / scale
    w_u = w * scale
    b_u = b - low * w.sum(1)
    step = projection_linf(u, w_u, b_u) if norm == "linf" else projection_l2(u, w_u, b_u)
    return step * scale


__all__ = ["project_onto_hyperplane", "projection_l2", "projection_linf"]
