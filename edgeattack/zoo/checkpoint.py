"""Reading weight files safely: safetensors, or `.pth` through `torch.load(weights_only=True)`.

Every way a file can be unusable ends in one `EdgeAttackError` line that names the file and what is
wrong with it: missing, empty (0 bytes), not a checkpoint at all, truncated or corrupt, holding
pickled objects that `weights_only=True` refuses, or holding no tensors. Nothing pickled is ever
executed.

The official repositories save more than a state dict: DeiT (and A-ViT, Mini-DeiT) a dict with
"model", "model_ema", the optimizer and the training `argparse.Namespace` under "args"; timm's
trainer (AdaViT) "state_dict" / "state_dict_ema" and "args"; ATS (SlowFast) "model_state" and a
YAML "cfg". `read_checkpoint` unwraps the first of the `layouts` keys present, strips a DDP
"module." prefix, and keeps the saved args and plain entries. `argparse.Namespace` is the only
class added to `weights_only`'s allow-list (`SAFE_GLOBALS`): it holds plain values, and its
unpickling runs no code of the file's choosing.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeattack._lazy import require
from edgeattack.errors import EdgeAttackError

__all__ = [
    "DEFAULT_LAYOUTS",
    "SAFE_GLOBALS",
    "CheckpointFile",
    "checkpoint_format",
    "read_checkpoint",
    "read_state_dict",
    "torch_load_weights_only",
]

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default format since PyTorch 1.6
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_PICKLE_PROTO = 0x80  # legacy torch.save: a pickle stream starts with PROTO
DEFAULT_LAYOUTS: tuple[str, ...] = (
    "model",  # DeiT, A-ViT, DynamicViT, Mini-DeiT (main.py's checkpoint.pth)
    "state_dict",  # timm's trainer, AdaViT, Lightning
    "model_state",  # ATS / SlowFast
    "state_dict_ema",
    "model_ema",
    "model_state_dict",  # the PyTorch tutorials
)
"""Where a wrapped checkpoint keeps its weights, in the order tried; a net may prefer another order."""
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
"""Classes `torch.load(weights_only=True)` may rebuild besides tensors and containers: the training args."""


@dataclass(frozen=True)
class CheckpointFile:
    """What a checkpoint file holds: the weights, where they were in it, and the training args saved beside them."""

    path: Path
    state: dict[str, Any]
    """The tensors, unwrapped and without a DDP "module." prefix."""
    layout: str = ""
    """The wrapper key the weights came from ("model", "state_dict_ema", "model_state", ...); "" when bare."""
    args: dict[str, Any] = field(default_factory=dict)
    """`vars()` of the `argparse.Namespace` saved under "args" (DeiT, A-ViT, AdaViT), else {}."""
    meta: dict[str, Any] = field(default_factory=dict)
    """The other plain top-level entries (epoch, arch, ATS's YAML "cfg"): no tensors, no nested state."""


def _reason(exc: BaseException) -> str:
    """The first line of an exception, cut to its first sentence when long; the type when it is empty."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if len(text) > 120 and ". " in text:
        text = text.split(". ", 1)[0]
    return text[:200] or type(exc).__name__


def checkpoint_format(path: Path) -> str:
    """'safetensors', 'zip' (torch.save), 'pickle' (legacy torch.save) or 'unknown', from the first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(16)
    if head.startswith((_ZIP_MAGIC, _EMPTY_ZIP_MAGIC)):
        return "zip"
    if len(head) >= 9 and head[8:9] == b"{":  # u64 little-endian header size, then the JSON header
        return "safetensors"
    if head[:1] == bytes([_PICKLE_PROTO]):
        return "pickle"
    return "unknown"


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise EdgeAttackError(f"{what} {path} does not exist")
    if not path.is_file():
        raise EdgeAttackError(f"{what} {path} is not a file")
    if path.stat().st_size == 0:
        raise EdgeAttackError(f"{what} {path} is empty (0 bytes)")


def torch_load_weights_only(path: str | Path, *, what: str = "checkpoint") -> Any:
    """`torch.load(path, weights_only=True)` on the CPU, with one clear error line for any bad file."""
    torch = require("torch", feature=f"reading a {what}")
    path = Path(path)
    _check_file(path, what)
    kind = checkpoint_format(path)
    if kind == "unknown":
        raise EdgeAttackError(
            f"{what} {path} is not a checkpoint: neither a torch.save file (zip or pickle) nor safetensors"
        )
    if kind == "safetensors":
        raise EdgeAttackError(f"{what} {path} is a safetensors file, not a torch.save file")
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = _reason(exc)
        if "Weights only load failed" in str(exc):
            _, _, after = str(exc).partition("WeightsUnpickler error:")
            detail = next((line.strip() for line in after.splitlines() if line.strip()), "")
            raise EdgeAttackError(
                f"cannot load {what} {path} with weights_only=True: it holds pickled objects other than "
                f"tensors, or is corrupt{' (' + detail[:160] + ')' if detail else ''}"
            ) from exc
        raise EdgeAttackError(f"{what} {path} is truncated or corrupt: {reason}") from exc


def _read_safetensors(path: Path) -> dict[str, Any]:
    safetensors_torch = require("safetensors.torch", feature="safetensors checkpoints")
    _check_file(path, "checkpoint")
    try:
        return dict(safetensors_torch.load_file(str(path)))
    except Exception as exc:
        raise EdgeAttackError(
            f"checkpoint {path} is truncated or corrupt (not a valid safetensors file): {_reason(exc)}"
        ) from exc


def _is_safetensors(path: Path) -> bool:
    """A `.safetensors` suffix, or a file whose first bytes are a safetensors header (a renamed file)."""
    if path.suffix == ".safetensors":
        return True
    if not path.is_file() or path.stat().st_size == 0 or checkpoint_format(path) != "safetensors":
        return False
    with open(path, "rb") as handle:
        size = int.from_bytes(handle.read(8), "little")
        if size > 100 * 2**20:
            return False
        try:
            return isinstance(json.loads(handle.read(size)), dict)
        except ValueError:
            return False


def read_state_dict(path: str | Path) -> dict[str, Any]:
    """Tensors of a checkpoint file, loaded without executing pickled code (`read_checkpoint(path).state`)."""
    return read_checkpoint(path).state


def read_checkpoint(path: str | Path, *, layouts: Sequence[str] = DEFAULT_LAYOUTS) -> CheckpointFile:
    """The weights of a checkpoint file and what was saved beside them, loaded without executing pickled code.

    A `.pth` that wraps its state dict (the official training scripts' layouts) is unwrapped from
    the first of `layouts` it holds. Raises EdgeAttackError, naming the file, when it does not
    exist, is empty, is not a checkpoint, is truncated or corrupt, holds pickled objects other than
    tensors, containers and `SAFE_GLOBALS`, or holds no tensors.
    """
    torch = require("torch", feature="reading a checkpoint")
    path = Path(path)
    layout, args, meta = "", {}, {}
    if _is_safetensors(path):
        state: Any = _read_safetensors(path)
    else:
        loaded = torch_load_weights_only(path)
        state = loaded
        if isinstance(loaded, dict):
            layout = next((key for key in layouts if isinstance(loaded.get(key), dict) and loaded[key]), "")
            if layout:
                state = loaded[layout]
                args = _saved_args(loaded.get("args"))
                meta = {str(key): value for key, value in loaded.items() if isinstance(value, (str, int, float, bool))}
    if not isinstance(state, dict):
        raise EdgeAttackError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    if not state:
        raise EdgeAttackError(f"checkpoint {path} holds no tensors (an empty state dict)")
    not_tensors = [str(key) for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if len(not_tensors) == len(state):
        wrappers = [key for key in DEFAULT_LAYOUTS if key not in layouts]
        hint = f" (its weights may be under {', '.join(wrappers)}, which this model does not read)" if wrappers else ""
        raise EdgeAttackError(
            f"checkpoint {path} holds no tensors (entries: {', '.join(not_tensors[:5])}"
            f"{', ...' if len(not_tensors) > 5 else ''}){hint}; is it a training log or an optimizer state?"
        )
    if not_tensors:
        raise EdgeAttackError(
            f"checkpoint {path} is not a state dict: {len(not_tensors)} entries are not tensors "
            f"({', '.join(not_tensors[:5])})"
        )
    if all(str(key).startswith("module.") for key in state):
        state = {str(key).removeprefix("module."): value for key, value in state.items()}
    return CheckpointFile(path=path, state=state, layout=layout, args=args, meta=meta)


def _saved_args(value: Any) -> dict[str, Any]:
    """The saved training args as a dict: `vars()` of a Namespace, a dict as it is, else {}."""
    if isinstance(value, argparse.Namespace):
        return dict(vars(value))
    if isinstance(value, dict):
        return {str(key): item for key, item in value.items()}
    return {}
