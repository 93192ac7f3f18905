"""Parity of an exported engine with the PyTorch model it came from, on real images.

`check_parity` runs the torch model and the engine (through `open_engine`, as everything else
runs it) on the same images and reports top-1 agreement, logit differences and both accuracies;
`record_parity` stores the report in the engine's metadata, so every later result can say how
faithful the engine it ran on was.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeattack._lazy import require
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError, EngineError
from edgeattack.export.metadata import EngineMetadata, read_onnx_metadata
from edgeattack.export.onnx_export import write_onnx_metadata

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParityReport:
    """How closely an engine reproduces its torch model on `n_images` images of `dataset`."""

    n_images: int
    top1_agreement: float
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    torch_acc: float
    engine_acc: float
    dataset: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"parity on {self.n_images} images of {self.dataset or 'the dataset'}: "
            f"top-1 agreement {self.top1_agreement:.4f}, max |dlogit| {self.max_abs_logit_diff:.3g}, "
            f"mean |dlogit| {self.mean_abs_logit_diff:.3g}, accuracy torch {self.torch_acc:.4f} "
            f"/ engine {self.engine_acc:.4f}"
        )


def torch_logits(model: Any, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits of a torch model over [0,1] images, in eval mode without gradients."""
    torch = require("torch", feature="parity checks")
    model.eval()
    with torch.no_grad():
        parts = []
        for start in range(0, len(images), batch_size):
            logits = model(torch.from_numpy(images[start : start + batch_size]))
            if isinstance(logits, (tuple, list)):
                logits = (logits[0] + logits[1]) / 2
            parts.append(logits.float().cpu().numpy())
    return np.concatenate(parts)


def engine_logits(engine: Any, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Logits of an active engine, `batch_size` images per call."""
    return np.concatenate(
        [engine.infer(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    )


def check_parity(
    model: Any,
    onnx_path: str | Path,
    dataset: ImageDataset,
    *,
    num_images: int = 256,
    batch_size: int = 64,
    providers: Sequence[str] | None = None,
) -> ParityReport:
    """Compare ZooModel `model` with the engine at `onnx_path` on the first `num_images` images."""
    from edgeattack.engines import open_engine

    if num_images <= 0 or batch_size <= 0:
        raise ConfigError("num_images and batch_size must be positive")
    subset = dataset.take(num_images)
    with open_engine(onnx_path, providers=providers) as engine:
        _warn_on_other_source(model, engine.metadata)
        theirs = engine_logits(engine, subset.images, batch_size)
    ours = torch_logits(model, subset.images, batch_size)
    if ours.shape != theirs.shape:
        raise EngineError(f"torch model gives logits {ours.shape}, engine {onnx_path} gives {theirs.shape}")
    diff = np.abs(ours - theirs)
    report = ParityReport(
        n_images=len(subset),
        top1_agreement=float((ours.argmax(1) == theirs.argmax(1)).mean()),
        max_abs_logit_diff=float(diff.max()),
        mean_abs_logit_diff=float(diff.mean()),
        torch_acc=float((ours.argmax(1) == subset.labels).mean()),
        engine_acc=float((theirs.argmax(1) == subset.labels).mean()),
        dataset=subset.spec,
    )
    logger.info("%s: %s", Path(onnx_path).name, report.summary())
    return report


def record_parity(onnx_path: str | Path, report: ParityReport) -> EngineMetadata:
    """Store `report` in the engine metadata of `onnx_path` (in place, atomically); the new metadata."""
    metadata = read_onnx_metadata(onnx_path)
    if metadata is None:
        raise EngineError(f"{onnx_path} carries no edgeattack metadata to record parity in")
    updated = metadata.replace(parity=report.to_dict())
    write_onnx_metadata(onnx_path, updated)
    return updated


def _warn_on_other_source(model: Any, metadata: EngineMetadata) -> None:
    ours = getattr(model, "weights_sha256", "")
    if metadata.source_sha256 and ours and metadata.source_sha256 != ours:
        logger.warning(
            "engine was exported from weights %s..., the torch model has %s...: parity compares different models",
            metadata.source_sha256[:12],
            ours[:12],
        )
