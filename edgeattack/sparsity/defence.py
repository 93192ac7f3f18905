"""The availability defence: an upper bound on the tokens each block may keep, set from clean data.

DeSparsify makes a token-sparse model keep every token. Capping the kept tokens per block at what
clean inputs need (a high quantile of the clean per-block counts) bounds the worst-case compute,
latency and energy an attacker can force, at the price of the clean images whose counts exceed it.
`token_cap_from_clean` measures the cap on a clean split (use one you do not evaluate on);
`with_token_cap` returns a capped copy of a token-sparse ZooModel, which exports like any other
(the cap is part of the graph and recorded in the engine metadata).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgeattack._lazy import require
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError

__all__ = ["parse_token_cap", "token_cap_from_clean", "with_token_cap"]


def _net(model: Any) -> Any:
    net = getattr(model, "net", model)
    if not hasattr(net, "set_token_cap"):
        raise ConfigError(
            f"model {getattr(model, 'model_name', type(net).__name__)} is not token-sparse: "
            "a token cap needs an ats/avit/adavit model"
        )
    return net


def clean_counts(model: Any, dataset: ImageDataset, *, batch_size: int = 64) -> np.ndarray:
    """Per-image, per-block token counts [N, depth] of `model` (uncapped) on `dataset`."""
    torch = require("torch", feature="token caps")
    net = _net(model)
    previous = net.token_cap
    net.set_token_cap(None)
    try:
        parts = []
        device = next(model.parameters()).device
        with torch.no_grad():
            for images, _ in dataset.batches(batch_size):
                x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
                parts.append(model.forward_counts(x)[1].cpu().numpy())
        return np.concatenate(parts)
    finally:
        net.set_token_cap(previous)


def token_cap_from_clean(
    model: Any, dataset: ImageDataset, *, quantile: float = 0.95, batch_size: int = 64
) -> tuple[int, ...]:
    """Per block, the `quantile` of the clean counts (rounded up; at least the class token)."""
    if not 0.0 < quantile <= 1.0:
        raise ConfigError(f"the token-cap quantile must be in (0, 1], got {quantile}")
    counts = clean_counts(model, dataset, batch_size=batch_size)
    caps = np.quantile(counts, quantile, axis=0, method="higher")
    return tuple(max(1, math.ceil(float(c))) for c in caps)


def with_token_cap(model: Any, token_cap: int | Sequence[int] | None) -> Any:
    """A copy of token-sparse `model` whose blocks keep at most `token_cap` tokens (class token included)."""
    _net(model)
    capped = copy.deepcopy(model)
    _net(capped).set_token_cap(token_cap)
    return capped


def parse_token_cap(text: str) -> tuple[str, float | tuple[int, ...]]:
    """`auto`, `auto:0.9` (a quantile of clean counts) or `N` / `N,N,...` (tokens per block)."""
    text = text.strip().lower()
    if text.startswith("auto"):
        _, _, q = text.partition(":")
        try:
            quantile = float(q) if q else 0.95
        except ValueError as exc:
            raise ConfigError(f"--token-cap auto:Q needs a number Q in (0, 1], got {q!r}") from exc
        return "auto", quantile
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError as exc:
        raise ConfigError(f"--token-cap takes auto, auto:Q or tokens per block (N or N,N,...), got {text!r}") from exc
    return "fixed", values
