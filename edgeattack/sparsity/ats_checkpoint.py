"""Official ATS checkpoints (adaptivetokensampling/ATS) for `edgeattack.sparsity.ats.ATS`.

The official training code (`libs/utils/checkpoint.py:save_checkpoint`, SlowFast's) saves
{'epoch', 'model_state', 'optimizer_state', 'cfg'}: the state dict of its `ViT`, whose names are
timm's (patch_embed, cls_token, pos_embed, blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.fc2}, norm, head) plus one `blocks.i.attn.out_zero_mask` [1, D] per ATS block: a zero
`Parameter` (requires_grad False) that the DROP_TOKENS compaction scatters into. It carries no
information, so it is dropped here (after checking it is zero). 'cfg' is the yacs config as YAML;
its VIT.ATS_BLOCKS become the net's stages unless the builder was given `stages`. The official
evaluation reads DeiT's own release ({'model': ...}) the same way, and edgeattack's saved state
dicts need nothing.
"""

from __future__ import annotations

import logging
from typing import Any

from edgeattack._lazy import require
from edgeattack.errors import ConfigError

torch = require("torch", feature="ATS checkpoints")
logger = logging.getLogger(__name__)

__all__ = ["adapt_state", "official_ats_blocks"]

_ZERO_MASK = "attn.out_zero_mask"


def official_ats_blocks(cfg: Any) -> tuple[int, ...] | None:
    """VIT.ATS_BLOCKS of an official checkpoint's YAML 'cfg' string; None when it has none."""
    if not isinstance(cfg, str) or "ATS_BLOCKS" not in cfg:
        return None
    yaml = require("yaml", feature="reading an ATS checkpoint's cfg")
    try:
        data = yaml.safe_load(cfg)
    except yaml.YAMLError as exc:
        raise ConfigError(f"the ATS checkpoint's 'cfg' is not valid YAML: {str(exc).splitlines()[0]}") from exc
    blocks = (data.get("VIT") or {}).get("ATS_BLOCKS") if isinstance(data, dict) else None
    if blocks is None:
        return None
    if not isinstance(blocks, list) or not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks):
        raise ConfigError(f"the ATS checkpoint's VIT.ATS_BLOCKS must be a list of block indices, got {blocks!r}")
    return tuple(blocks)


def adapt_state(net: Any, checkpoint: Any) -> dict[str, Any]:
    """`checkpoint`'s (a `CheckpointFile`) state dict in `net`'s names; `net` takes the official ATS_BLOCKS.

    Drops the official `out_zero_mask` entries (ConfigError if one is not zero). When the saved
    'cfg' names ATS blocks and `net` was built without explicit `stages`, `net.set_stages` adopts
    them; with explicit stages that differ, a warning says which are used.
    """
    state = {}
    for key, value in checkpoint.state.items():
        if key.endswith(_ZERO_MASK):
            if bool(torch.count_nonzero(value)):
                raise ConfigError(
                    f"{key} in {checkpoint.path} is not zero: the official ATS compaction adds it to every kept "
                    "token, which edgeattack's ATS does not reproduce"
                )
            continue
        state[key] = value
    blocks = official_ats_blocks(checkpoint.meta.get("cfg"))
    if blocks is not None and tuple(blocks) != tuple(net.stages):
        if net.stages_given:
            logger.warning(
                "%s was saved with ATS_BLOCKS %s; using the stages given, %s",
                checkpoint.path,
                list(blocks),
                list(net.stages),
            )
        else:
            logger.info("ATS stages from %s's cfg: %s", checkpoint.path, list(blocks))
            net.set_stages(blocks)
    return state
