"""Where the PyTorch side computes, and in which precision: `--device` and `--precision`.

`resolve_device("auto" | "cpu" | "cuda" | "cuda:N")` gives the torch device string to use and is
the one place that checks a CUDA request against the machine (a clear ConfigError when there is no
GPU, or no GPU N). `Precision` is the autocast policy: "fp32" (no autocast), "bf16" (autocast
bfloat16, CPU or CUDA) or "fp16" (autocast float16, CUDA only; training adds a gradient scaler).
Attacks keep their perturbation, loss and input gradients in float32 whatever the autocast dtype.

TF32 policy: edgeattack never turns TF32 on. `torch.backends.cuda.matmul.allow_tf32` stays at its
PyTorch default (False) and cuDNN convolutions keep PyTorch's default (TF32 allowed); a run records
both in `precision_record()` so a result says what its matmuls did.

torch is imported inside the functions: this module is safe to import on a board without it.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from edgeattack.errors import ConfigError

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
PRECISIONS = ("fp32", "bf16", "fp16")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def resolve_device(spec: str | None = "auto") -> str:
    """The torch device for `spec`: "auto" is cuda:0 when a GPU is visible, else cpu.

    ConfigError for an unknown spelling, a CUDA device on a machine without CUDA, or an index past
    the visible GPUs.
    """
    text = (spec or "auto").strip().lower()
    if not _DEVICE_PATTERN.match(text):
        raise ConfigError(f"unknown device {spec!r}; choose {DEVICE_CHOICES}")
    import torch

    if text == "auto":
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {spec}: no CUDA device is visible here (use --device cpu or auto)")
    index = int(text.partition(":")[2] or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise ConfigError(f"--device {spec}: only {count} CUDA device(s) are visible (cuda:0..cuda:{count - 1})")
    return f"cuda:{index}"


def device_record(device: str) -> dict[str, Any]:
    """What a result records about the device it ran on: the torch device and, for CUDA, the GPU's name."""
    record: dict[str, Any] = {"device": device}
    if device.startswith("cuda"):
        import torch

        record["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return record


@dataclass(frozen=True)
class Precision:
    """An autocast policy: `name` is fp32, bf16 or fp16."""

    name: str = "fp32"

    def __post_init__(self) -> None:
        if self.name not in PRECISIONS:
            raise ConfigError(f"unknown precision {self.name!r}; choose one of {', '.join(PRECISIONS)}")

    @property
    def enabled(self) -> bool:
        return self.name != "fp32"

    def dtype(self) -> Any:
        """The torch dtype autocast computes in (float32 for fp32)."""
        import torch

        return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[self.name]

    def check_device(self, device: str) -> None:
        """ConfigError when the policy is not available on `device` (fp16 autocast needs CUDA)."""
        if self.name == "fp16" and not device.startswith("cuda"):
            raise ConfigError("--precision fp16 needs a CUDA device; on the CPU use bf16")

    @contextlib.contextmanager
    def autocast(self, device: str) -> Iterator[None]:
        """torch.autocast over the block for bf16/fp16 on `device`; nothing for fp32."""
        if not self.enabled:
            yield
            return
        self.check_device(device)
        import torch

        with torch.autocast(device_type=device.split(":")[0], dtype=self.dtype()):
            yield

    def grad_scaler(self, device: str) -> Any:
        """A torch GradScaler for fp16 training, None otherwise (bf16 needs none)."""
        if self.name != "fp16":
            return None
        import torch

        return torch.amp.GradScaler(device.split(":")[0])


def precision_record(precision: Precision, device: str) -> dict[str, Any]:
    """What a result records about precision: the autocast dtype and the TF32 switches in effect."""
    import torch

    record: dict[str, Any] = {"precision": precision.name}
    if device.startswith("cuda"):
        record["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
        record["tf32_cudnn"] = bool(torch.backends.cudnn.allow_tf32)
    return record
