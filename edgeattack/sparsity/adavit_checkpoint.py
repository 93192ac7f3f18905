"""Official AdaViT checkpoints (MengLcool/AdaViT) in `edgeattack.sparsity.adavit.AdaViT`'s names.

The official training script (`ada_main.py`, timm's trainer with its `MyCheckpointSaver`) saves
{'epoch', 'arch', 'state_dict', 'optimizer', 'version', 'args', 'state_dict_ema'}; its loader
(`utils.ada_load_state_dict`) takes 'state_dict_ema' first, then 'state_dict', then 'model' (a DeiT
release), which `AdaViT.checkpoint_layouts` repeats. The official `AdaStepT2T_ViT(use_t2t=False)`
(`ada_step_deit_*`) differs from timm's ViT in names only:

- `blocks.i.attn.{query,key,value}` (three Linear [D, D]) -> `blocks.i.attn.qkv` [3D, D], stacked
  in that order (the inverse of the official `convert_qkv`);
- `blocks.i.attn.token_select.mlp_head` [1, D] -> `decisions.i.token`;
- `blocks.i.head_select.mlp_head` [heads, D] -> `decisions.i.head`;
- `blocks.i.layer_select.mlp_head` [2, D] -> `decisions.i.layer`;
- everything else (patch_embed, cls_token, the fixed sinusoid pos_embed, norms, proj, mlp, head)
  keeps its name; gates trained with --no-head-select-bias / --no-layer-select-bias get zero biases.

A state dict already in edgeattack's names passes through unchanged. The training args saved
beside the weights are checked for the options whose inference differs from the Ada-DeiT-S
mechanism that `AdaViT` implements (T2T models, --norm-policy, --ada-head-v2, --ada-head-attn,
--ada-token-nonstep, token selection from a later block or without --ada-token-with-mlp): those
raise ConfigError instead of loading into a model that would compute something else.
"""

from __future__ import annotations

import re
from typing import Any

from edgeattack._lazy import require
from edgeattack.errors import ConfigError

torch = require("torch", feature="AdaViT checkpoints")

__all__ = ["adapt_state", "check_official_args", "from_official", "is_official_state"]

_RENAMES = (
    (re.compile(r"^blocks\.(\d+)\.attn\.token_select\.mlp_head\.(weight|bias)$"), r"decisions.\1.token.\2"),
    (re.compile(r"^blocks\.(\d+)\.head_select\.mlp_head\.(weight|bias)$"), r"decisions.\1.head.\2"),
    (re.compile(r"^blocks\.(\d+)\.layer_select\.mlp_head\.(weight|bias)$"), r"decisions.\1.layer.\2"),
)
_QKV = re.compile(r"^(blocks\.\d+\.attn)\.(query|key|value)\.(weight|bias)$")
_UNSUPPORTED_FLAGS = {
    "norm_policy": "--norm-policy (a LayerNorm before the head/layer gates)",
    "ada_head_v2": "--ada-head-v2 (head selection on the MLP hidden units)",
    "ada_head_attn": "--ada-head-attn (unused heads pass their values through)",
    "ada_token_nonstep": "--ada-token-nonstep (all token policies from the first blocks)",
}


def is_official_state(state: dict[str, Any]) -> bool:
    """True when `state` has the official AdaViT names (separate query/key/value or *_select.mlp_head)."""
    return any(_QKV.match(key) or "_select.mlp_head." in key for key in state)


def from_official(state: dict[str, Any]) -> dict[str, Any]:
    """The official AdaViT state dict `state` in `AdaViT`'s names (query/key/value stacked into qkv)."""
    out: dict[str, Any] = {}
    parts: dict[tuple[str, str], dict[str, Any]] = {}
    for key, value in state.items():
        match = _QKV.match(key)
        if match:
            parts.setdefault((match.group(1), match.group(3)), {})[match.group(2)] = value
            continue
        for pattern, replacement in _RENAMES:
            if pattern.match(key):
                key = pattern.sub(replacement, key)
                break
        out[key] = value
    for (prefix, kind), found in parts.items():
        missing = [name for name in ("query", "key", "value") if name not in found]
        if missing:
            raise ConfigError(f"official AdaViT checkpoint: {prefix} has no {', '.join(missing)} {kind}")
        out[f"{prefix}.qkv.{kind}"] = torch.cat([found["query"], found["key"], found["value"]], dim=0)
    for key in [k for k in out if k.startswith("decisions.") and k.endswith(".weight")]:
        out.setdefault(key.removesuffix("weight") + "bias", out[key].new_zeros(out[key].shape[0]))  # --no-*-select-bias
    return out


def check_official_args(args: dict[str, Any]) -> None:
    """ConfigError when the saved `ada_main.py` args ask for an inference `AdaViT` does not implement."""
    if not args:
        return
    problems = []
    model = str(args.get("model", ""))
    if model and not model.startswith("ada_step_deit"):
        problems.append(f"model {model!r} (only the DeiT-based ada_step_deit_* models)")
    problems += [text for flag, text in _UNSUPPORTED_FLAGS.items() if args.get(flag)]
    if int(args.get("ada_token_start_layer", 0) or 0) != 0:
        problems.append(f"--ada-token-start-layer {args['ada_token_start_layer']} (token selection in every block)")
    if args.get("ada_token") and not args.get("ada_token_with_mlp"):
        problems.append("--ada-token without --ada-token-with-mlp (dropped tokens still through the MLP)")
    if problems:
        raise ConfigError(
            "official AdaViT checkpoint trained with options edgeattack's AdaViT does not implement: "
            + "; ".join(problems)
        )


def adapt_state(net: Any, checkpoint: Any) -> dict[str, Any]:
    """`checkpoint`'s (a `CheckpointFile`) state dict in `net`'s names, with a clear error when its policies differ.

    Official names are converted (`from_official`) after `check_official_args`; edgeattack's own
    names pass through. A checkpoint whose decision networks sit in other blocks than `net`'s, or
    that was saved by another `variant`, raises ConfigError naming the builder option to pass.
    """
    state = dict(checkpoint.state)
    if is_official_state(state):
        check_official_args(checkpoint.args)
        state = from_official(state)
    have = _decision_blocks(state)
    if not have["token"] and not have["layer"] and not have["block"]:
        return state  # a plain ViT's weights: let the loader report the missing decision networks
    if have["block"] and net.variant != "edgeattack-v1":
        raise ConfigError(
            "this AdaViT checkpoint was saved by edgeattack's earlier mechanism (one block gate "
            "decisions.i.block): build the model with variant='edgeattack-v1' (--model-arg variant=edgeattack-v1)"
        )
    want = _decision_blocks(dict.fromkeys(net.state_dict()))
    gates = "block" if net.variant == "edgeattack-v1" else "layer"
    for what, option in (("head", "head_policy"), (gates, "layer_policy")):
        if have[what] != want[what]:
            hint = f"keep_layers={min(have[what])}" if have[what] else f"{option}=False"
            raise ConfigError(
                f"this AdaViT checkpoint has {what} policies in blocks {sorted(have[what])}, the model in "
                f"{sorted(want[what])}: build it with {hint} (--model-arg {hint})"
            )
    return state


def _decision_blocks(state: dict[str, Any]) -> dict[str, set[int]]:
    """Per kind of decision (token, head, layer, block), the blocks that have one in `state`."""
    found: dict[str, set[int]] = {"token": set(), "head": set(), "layer": set(), "block": set()}
    for key in state:
        match = re.match(r"^decisions\.(\d+)\.(token|head|layer|block)\.weight$", key)
        if match:
            found[match.group(2)].add(int(match.group(1)))
    return found
