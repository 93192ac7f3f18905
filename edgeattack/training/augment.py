"""Random translation, the augmentation every edgeattack trainer uses (pad with zeros, then crop).

The offsets are drawn for a whole global batch and applied to any slice of it, so the ranks of a
distributed run draw the same random numbers as one process would and each shifts only its images.
"""

from __future__ import annotations

from typing import Any


def shift_offsets(n: int, max_shift: int, generator: Any) -> tuple[Any, Any] | None:
    """(dx, dy) in [0, 2·max_shift] for `n` images from `generator`; None when `max_shift` is 0."""
    import torch

    if max_shift == 0:
        return None
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    return dx, dy


def apply_shift(images: Any, offsets: tuple[Any, Any] | None, max_shift: int) -> Any:
    """Translate image i by (dx[i] - max_shift, dy[i] - max_shift) pixels, zero padding."""
    import torch

    if offsets is None or max_shift == 0:
        return images
    dx, dy = offsets
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    rows = (dy.view(n, 1) + torch.arange(h).view(1, h)).view(n, 1, h, 1)
    cols = (dx.view(n, 1) + torch.arange(w).view(1, w)).view(n, 1, 1, w)
    batch = torch.arange(n).view(n, 1, 1, 1)
    channel = torch.arange(c).view(1, c, 1, 1)
    return padded[batch, channel, rows, cols]


def random_shift(images: Any, max_shift: int, generator: Any) -> Any:
    """Translate each image by up to `max_shift` pixels (zero padding), independently per image."""
    return apply_shift(images, shift_offsets(int(images.shape[0]), max_shift, generator), max_shift)
