"""The PyTorch reference back-end: a zoo model (or any module over [0,1] images) as an engine."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeattack._lazy import require
from edgeattack.engines.base import LOGITS, Engine
from edgeattack.export.metadata import EngineMetadata


def metadata_for_model(model: Any, *, precision: str = "fp32") -> EngineMetadata:
    """Engine metadata describing a ZooModel as it would be exported."""
    config = model.config
    return EngineMetadata(
        input_name="images",
        input_shape=("batch", *config.input_size),
        output_names=(LOGITS,),
        bounds=tuple(config.bounds),  # type: ignore[arg-type]
        mean=tuple(config.mean),
        std=tuple(config.std),
        labels=tuple(config.label_names),
        precision=precision,
        source_model=model.model_name,
        source_sha256=getattr(model, "weights_sha256", ""),
        exporter="torch",
    )


class TorchEngine(Engine):
    """Runs a torch module in eval mode under `torch.no_grad()` on the CPU (or `device`)."""

    backend = "torch"

    def __init__(self, model: Any, *, device: str = "cpu", source: str | Path | None = None) -> None:
        self._torch = require("torch", feature="the torch engine")
        self.model = model.eval().to(device)
        self.device = device
        super().__init__(source or getattr(model, "model_name", "torch-model"), metadata_for_model(model))

    @classmethod
    def from_name(
        cls,
        name: str,
        *,
        checkpoint: str | Path | None = None,
        device: str = "cpu",
        pretrained: bool | None = None,
        random_weights: bool = False,
        model_args: Mapping[str, Any] | None = None,
    ) -> TorchEngine:
        """Zoo model `name` with the weights the options say (`create_model`'s rules) and builder `model_args`."""
        from edgeattack.zoo.factory import create_model

        model = create_model(
            name, checkpoint=checkpoint, pretrained=pretrained, random_weights=random_weights, **dict(model_args or {})
        )
        return cls(model, device=device, source=name)

    @property
    def providers(self) -> list[str]:
        return [f"torch:{self.device}"]

    def _activate_impl(self) -> None:
        return None

    def _infer_impl(self, images: np.ndarray) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.no_grad():
            logits = self.model(torch.from_numpy(images).to(self.device))
        if isinstance(logits, (tuple, list)):
            logits = (logits[0] + logits[1]) / 2
        return {LOGITS: logits.float().cpu().numpy()}
