"""Parity of an exported engine with the PyTorch model it came from, on real images.

`check_parity` runs the torch model and the engine (through `open_engine`, as everything else
runs it) on the same images and reports top-1 agreement, logit differences and both accuracies,
and for token-sparse engines (extra output `token_counts`) how exactly the per-block token counts
agree with the model's `forward_counts`;
`record_parity` stores the report in the engine's metadata, so every later result can say how
faithful the engine it ran on was. `synthetic_images` makes seeded images of any input size
(uniform noise and smooth patterns, without labels) for a model no real images of its size were
given for: parity then says nothing about accuracy, only about agreement.
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
from edgeattack.engines.base import LOGITS
from edgeattack.errors import ConfigError, EngineError
from edgeattack.export.metadata import EngineMetadata, read_onnx_metadata
from edgeattack.export.onnx_export import TOKEN_COUNTS, write_onnx_metadata

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParityReport:
    """How closely an engine reproduces its torch model on `n_images` images of `dataset`."""

    n_images: int
    top1_agreement: float
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    torch_acc: float | None  # None on images without labels (`synthetic_images`)
    engine_acc: float | None
    dataset: str = ""
    token_count_agreement: float | None = None  # images whose counts agree in every block (token-sparse)
    token_count_block_agreement: float | None = None  # (image, block) counts that agree exactly
    max_abs_token_count_diff: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"parity on {self.n_images} images of {self.dataset or 'the dataset'}: "
            f"top-1 agreement {self.top1_agreement:.4f}, max |dlogit| {self.max_abs_logit_diff:.3g}, "
            f"mean |dlogit| {self.mean_abs_logit_diff:.3g}"
            + (
                " (no labels: no accuracy)"
                if self.torch_acc is None or self.engine_acc is None
                else f", accuracy torch {self.torch_acc:.4f} / engine {self.engine_acc:.4f}"
            )
            + (
                ""
                if self.token_count_agreement is None
                else f", token counts agree on {self.token_count_agreement:.4f} of images "
                f"(max |dcount| {self.max_abs_token_count_diff})"
            )
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


def torch_counts(model: Any, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Per-block token counts [N, depth] of a token-sparse torch model, in eval mode without gradients."""
    torch = require("torch", feature="parity checks")
    model.eval()
    with torch.no_grad():
        parts = [
            model.forward_counts(torch.from_numpy(images[start : start + batch_size]))[1].cpu().numpy()
            for start in range(0, len(images), batch_size)
        ]
    return np.concatenate(parts).astype(np.int64)


def engine_outputs(engine: Any, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """Every output of an active engine by name, `batch_size` images per call."""
    parts = [engine.run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


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
    images = np.asarray(subset.images)  # the first `num_images` only, decoded once for both sides
    with open_engine(onnx_path, providers=providers) as engine:
        _warn_on_other_source(model, engine.metadata)
        outputs = engine_outputs(engine, images, batch_size)
    theirs = outputs[LOGITS]
    ours = torch_logits(model, images, batch_size)
    if ours.shape != theirs.shape:
        raise EngineError(f"torch model gives logits {ours.shape}, engine {onnx_path} gives {theirs.shape}")
    diff = np.abs(ours - theirs)
    counts: dict[str, Any] = {}
    if TOKEN_COUNTS in outputs and getattr(model, "token_sparse", False):
        counts = _count_agreement(torch_counts(model, images, batch_size), outputs[TOKEN_COUNTS], onnx_path)
    labelled = bool((subset.labels >= 0).all())
    report = ParityReport(
        n_images=len(subset),
        top1_agreement=float((ours.argmax(1) == theirs.argmax(1)).mean()),
        max_abs_logit_diff=float(diff.max()),
        mean_abs_logit_diff=float(diff.mean()),
        torch_acc=float((ours.argmax(1) == subset.labels).mean()) if labelled else None,
        engine_acc=float((theirs.argmax(1) == subset.labels).mean()) if labelled else None,
        dataset=subset.spec,
        **counts,
    )
    logger.info("%s: %s", Path(onnx_path).name, report.summary())
    return report


SYNTHETIC = "synthetic"
"""The dataset name of `synthetic_images`."""


def synthetic_images(input_size: Sequence[int], count: int, *, seed: int = 0) -> ImageDataset:
    """`count` seeded [0,1] images of `input_size` (C, H, W), labelled -1 (none), named "synthetic".

    Even positions are uniform noise, odd ones smooth patterns (a few random low-frequency
    sinusoidal gratings per channel, with a little noise): both kinds of input a ViT's patch
    embedding and attention see differently, so the engine is compared on more than one regime.
    """
    if count <= 0:
        raise ConfigError(f"the number of synthetic images must be positive, got {count}")
    channels, height, width = (int(d) for d in input_size)
    rng = np.random.default_rng(seed)
    images = rng.random((count, channels, height, width), dtype=np.float32)
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    for index in range(1, count, 2):
        for channel in range(channels):
            pattern = np.zeros((height, width), dtype=np.float32)
            for _ in range(3):
                fy, fx = rng.uniform(0.5, 4.0, size=2)
                phase = rng.uniform(0.0, 2 * np.pi)
                pattern += np.sin(2 * np.pi * (fy * ys + fx * xs) + phase).astype(np.float32)
            pattern = 0.5 + pattern / 6.0 + 0.05 * rng.standard_normal((height, width)).astype(np.float32)
            images[index, channel] = np.clip(pattern, 0.0, 1.0)
    return ImageDataset(
        images=images,
        labels=np.full(count, -1, dtype=np.int64),
        name=SYNTHETIC,
        split=f"{height}x{width}-seed{seed}",
        seed=seed,
    )


def _count_agreement(ours: np.ndarray, theirs: np.ndarray, onnx_path: str | Path) -> dict[str, Any]:
    if ours.shape != theirs.shape:
        raise EngineError(f"torch model gives token counts {ours.shape}, engine {onnx_path} gives {theirs.shape}")
    equal = ours == theirs.astype(np.int64)
    return {
        "token_count_agreement": float(equal.all(axis=1).mean()),
        "token_count_block_agreement": float(equal.mean()),
        "max_abs_token_count_diff": int(np.abs(ours - theirs.astype(np.int64)).max()),
    }


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
