"""The engine protocol: a deployed model as a function from images to logits, with bookkeeping.

A back-end implements `_activate_impl`, `_infer_impl` and `_deactivate_impl` (Polygraphy's runner
lifecycle); the public methods own the checks, the query counter and the batch-dependence rule:
an engine whose output for one image depends on the rest of the batch (ORT dynamic int8) is run
one image at a time, so no result depends on how images were batched.
"""

from __future__ import annotations

import abc
import logging
from pathlib import Path
from types import TracebackType
from typing import ClassVar, TypeVar

import numpy as np

from edgeattack.errors import EngineError
from edgeattack.export.metadata import EngineMetadata

logger = logging.getLogger(__name__)

LOGITS = "logits"

EngineT = TypeVar("EngineT", bound="Engine")


class Engine(abc.ABC):
    """Base class of every back-end. Use as a context manager, or call `activate()` yourself."""

    backend: ClassVar[str] = "abstract"

    def __init__(self, source: str | Path, metadata: EngineMetadata) -> None:
        self.source = str(source)
        self.metadata = metadata
        self.queries = 0
        self.calls = 0
        self._active = False

    # lifecycle -----------------------------------------------------------------------------
    def activate(self: EngineT) -> EngineT:
        if not self._active:
            self._activate_impl()
            self._active = True
        return self

    def deactivate(self) -> None:
        if self._active:
            self._deactivate_impl()
            self._active = False

    def __enter__(self: EngineT) -> EngineT:
        return self.activate()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.deactivate()

    # properties ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return Path(self.source).name if Path(self.source).suffix else self.source

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.metadata.input_size

    @property
    def bounds(self) -> tuple[float, float]:
        return self.metadata.bounds

    @property
    def batch_dependent(self) -> bool:
        """True when one image's output depends on the rest of its batch (then run per image)."""
        return self.metadata.batch_dependent

    @property
    def extra_outputs(self) -> tuple[str, ...]:
        return self.metadata.extra_outputs

    @property
    @abc.abstractmethod
    def providers(self) -> list[str]:
        """The execution providers / devices really in use (not merely available)."""

    @property
    def file_size_bytes(self) -> int | None:
        path = Path(self.source)
        return path.stat().st_size if path.is_file() else None

    def reset_counter(self) -> None:
        self.queries = 0
        self.calls = 0

    # inference -----------------------------------------------------------------------------
    def check_input(self, images: np.ndarray) -> np.ndarray:
        """float32 contiguous NCHW of the engine's input size, or EngineError saying what differs."""
        if not isinstance(images, np.ndarray):
            raise EngineError(f"engine input must be a numpy array, got {type(images).__name__}")
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(self.input_size):
            raise EngineError(
                f"engine {self.name} takes inputs of size {tuple(self.input_size)} (C, H, W), "
                f"got {tuple(images.shape[1:]) if images.ndim == 4 else images.shape}"
            )
        return np.ascontiguousarray(images, dtype=np.float32)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """All outputs (`logits` and any extra ones, such as `token_counts`) for a batch."""
        if not self._active:
            raise EngineError(f"engine {self.name} is not active: use it in a `with` block or call activate()")
        images = self.check_input(images)
        if images.shape[0] == 0:
            raise EngineError("cannot run an engine on an empty batch")
        if self.batch_dependent and images.shape[0] > 1:
            parts = [self._run_counted(images[i : i + 1]) for i in range(images.shape[0])]
            return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
        return self._run_counted(images)

    def infer(self, images: np.ndarray) -> np.ndarray:
        """Logits [N, classes] for float32 NCHW images in the engine's bounds."""
        return self.run(images)[LOGITS]

    def predict(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Top-1 labels, `batch_size` images per call."""
        return np.concatenate(
            [self.infer(images[i : i + batch_size]).argmax(axis=1) for i in range(0, len(images), batch_size)]
        )

    def _run_counted(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self._infer_impl(images)
        self.queries += int(images.shape[0])
        self.calls += 1
        logits = outputs.get(LOGITS)
        if logits is None or logits.shape[0] != images.shape[0]:
            raise EngineError(f"engine {self.name} returned no logits for {images.shape[0]} images")
        return outputs

    # back-end hooks ------------------------------------------------------------------------
    @abc.abstractmethod
    def _activate_impl(self) -> None: ...

    @abc.abstractmethod
    def _infer_impl(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs by name for a checked float32 batch; the logits under `LOGITS`."""

    def _deactivate_impl(self) -> None:
        return None

    def describe(self) -> dict[str, object]:
        """What a result records about the engine."""
        return {
            "source": self.source,
            "backend": self.backend,
            "providers": self.providers if self._active else [],
            "precision": self.metadata.precision,
            "quantization": self.metadata.quantization,
            "source_model": self.metadata.source_model,
            "batch_dependent": self.batch_dependent,
            "file_size_bytes": self.file_size_bytes,
            "extra_outputs": list(self.extra_outputs),
        }
