"""Token-depth maps: how many blocks each patch token reaches (as in DeSparsify's figures).

For every image and every *original* patch position, `token_depth` counts the blocks (0..depth)
that process that patch token, by the model's own accounting: the keep masks of
`keep_token_masks` sum over the tokens to the model's per-block token counts exactly
(`forward_counts` of ATS, A-ViT and AdaViT, `kept_token_counts` of DynamicViT), whatever the
drop mode. The mechanisms compact tokens physically, so the masks come from each network's
`keep_masks(x)` (which follows the original positions through every compaction) or, for
DynamicViT, from the kept positions `forward_pruned` records. A dense timm ViT processes every
token in every block.

`depth_grid` lays the mean depth over images out on the patch grid (the heat map);
`token_depth_summary` gives the JSON-ready record. A DeSparsify perturbation shows up as a
deeper map: tokens that the clean image drops early survive to later blocks.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from edgeattack._lazy import require
from edgeattack.errors import ConfigError, DataError

torch = require("torch", feature="token-depth maps")

logger = logging.getLogger(__name__)

__all__ = ["depth_grid", "keep_token_masks", "token_depth", "token_depth_summary"]


def keep_token_masks(model: Any, images: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """bool [N, depth, num_tokens]: which tokens (prefix/class tokens first, then the patches in
    their original order) block b processes for each image; `.sum(-1)` equals the model's counts.

    `model` is a ZooModel (`images` in [0, 1], normalised here) or a bare network (`images`
    already normalised). Runs without gradients in eval mode, `batch_size` images at a time, and
    restores the model's mode. ConfigError for a model that neither drops tokens nor is a timm ViT.
    """
    net = getattr(model, "net", model)
    run = _mask_runner(net)
    array = _check_images(images)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            masks = []
            for start in range(0, len(array), batch_size):
                x = torch.from_numpy(array[start : start + batch_size])
                if net is not model:
                    x = (x - model.mean) / model.std
                masks.append(run(net, x).cpu().numpy())
    finally:
        model.train(training)
    if not masks:
        return np.zeros((0, _depth(net), _num_tokens(net)), dtype=bool)
    return np.concatenate(masks).astype(bool)


def token_depth(model: Any, images: np.ndarray, *, batch_size: int = 64) -> np.ndarray:
    """int64 [N, num_patch_tokens]: for each image and original patch position, the blocks (0..depth)
    that process that patch token. The class token (and any other prefix token) is left out.

    Exact w.r.t. the model's counts: `depths.sum(1)` plus the blocks that process the class token
    (every block, except the blocks AdaViT skips whole) equals `counts.sum(1)`. See
    `keep_token_masks` for `model`, `images` and `batch_size`.
    """
    masks = keep_token_masks(model, images, batch_size=batch_size)
    prefix = _num_prefix(getattr(model, "net", model))
    return masks[:, :, prefix:].sum(axis=1).astype(np.int64)


def depth_grid(depths: np.ndarray, grid: tuple[int, int] | None = None) -> np.ndarray:
    """float [grid_h, grid_w]: the mean over images of `token_depth`'s rows, on the patch grid (row-major).

    `grid` None means square (ConfigError when the patch count is not a square number).
    """
    array = np.asarray(depths)
    if array.ndim != 2:
        raise ConfigError(f"token depths must be [images, patches], got shape {array.shape}")
    if array.shape[0] == 0:
        raise ConfigError("a depth grid needs at least one image")
    patches = array.shape[1]
    if grid is None:
        side = math.isqrt(patches)
        if side * side != patches:
            raise ConfigError(f"{patches} patch tokens do not form a square grid; pass grid=(height, width)")
        grid = (side, side)
    height, width = (int(g) for g in grid)
    if height < 1 or width < 1 or height * width != patches:
        raise ConfigError(f"grid {tuple(grid)} does not hold {patches} patch tokens")
    return array.astype(np.float64).mean(axis=0).reshape(height, width)


def token_depth_summary(model: Any, images: np.ndarray, *, batch_size: int = 64) -> dict[str, Any]:
    """{"depth", "images", "grid", "mean_depth", "tur"} of `model` on `images`.

    `grid`: `depth_grid` on the model's patch grid, as nested lists; `mean_depth`: the mean patch
    token depth (blocks); `tur`: the token utilisation ratio (counts, class token included, over
    depth x num_tokens, the mean over images, as `edgeattack.metrics.tokens.tur`).
    """
    net = getattr(model, "net", model)
    masks = keep_token_masks(model, images, batch_size=batch_size)
    depths = masks[:, :, _num_prefix(net) :].sum(axis=1)
    count, depth, tokens = masks.shape
    grid = depth_grid(depths, _grid_size(net, depths.shape[1]))
    summary = {
        "depth": depth,
        "images": count,
        "grid": [[float(v) for v in row] for row in grid],
        "mean_depth": float(depths.mean()),
        "tur": float((masks.sum(axis=(1, 2)) / float(depth * tokens)).mean()),
    }
    logger.info(
        "token depth of %d images: mean %.2f of %d blocks, TUR %.3f",
        count,
        summary["mean_depth"],
        depth,
        summary["tur"],
    )
    return summary


# -- per network kind ------------------------------------------------------------------------------
def _mask_runner(net: Any) -> Any:
    """A function (net, normalised x) -> bool tensor [B, depth, num_tokens] for `net`, or ConfigError."""
    from edgeattack.sparsity.base import is_token_sparse

    if is_token_sparse(net):
        if not callable(getattr(net, "keep_masks", None)):
            raise ConfigError(
                f"{type(net).__name__} ({net.mechanism}) does not expose its keep masks (keep_masks(x)): "
                "no token-depth map"
            )
        return _sparse_masks
    if _is_dynamicvit(net):
        return _dynamicvit_masks
    vision_transformer = require("timm.models.vision_transformer", feature="token-depth maps")
    if isinstance(net, vision_transformer.VisionTransformer):
        return _dense_masks
    raise ConfigError(
        f"{type(net).__name__} is neither token-sparse (ats/avit/adavit/dynamicvit) nor a timm ViT: no token depth"
    )


def _sparse_masks(net: Any, x: Any) -> Any:
    return net.keep_masks(x)[1]


def _dynamicvit_masks(net: Any, x: Any) -> Any:
    """DynamicViT: all tokens until the first pruning location, then the class token and the kept patches."""
    _, _, kept = net.forward_pruned(x, record=True)
    batch, tokens = x.shape[0], net.num_patches + 1
    current = torch.ones(batch, tokens, dtype=torch.bool)
    columns, stage = [], 0
    for index in range(net.depth):
        if stage < len(net.prune_locations) and index == net.prune_locations[stage]:
            current = torch.zeros(batch, tokens, dtype=torch.bool).scatter(1, kept[stage].cpu() + 1, True)
            current[:, 0] = True
            stage += 1
        columns.append(current)
    return torch.stack(columns, dim=1)


def _dense_masks(net: Any, x: Any) -> Any:
    return torch.ones(x.shape[0], _depth(net), _num_tokens(net), dtype=torch.bool)


def _is_dynamicvit(net: Any) -> bool:
    from edgeattack.sparsity.dynamicvit import DynamicViT

    return isinstance(net, DynamicViT)


def _depth(net: Any) -> int:
    return int(getattr(net, "depth", None) or len(net.blocks))


def _num_prefix(net: Any) -> int:
    """Tokens before the patches: the class token (and a plain ViT's register/distillation tokens)."""
    return int(getattr(net, "num_prefix_tokens", 1))


def _num_tokens(net: Any) -> int:
    return int(net.patch_embed.num_patches) + _num_prefix(net)


def _grid_size(net: Any, patches: int) -> tuple[int, int] | None:
    """The network's patch grid (height, width) when it has one that holds `patches`, else None (square)."""
    grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
    if grid is None or len(grid) != 2 or int(grid[0]) * int(grid[1]) != patches:
        return None
    return int(grid[0]), int(grid[1])


def _check_images(images: Any) -> np.ndarray:
    array = np.asarray(images, dtype=np.float32)
    if array.ndim != 4:
        raise DataError(f"token depth needs images [N, C, H, W], got shape {array.shape}")
    return np.ascontiguousarray(array)
