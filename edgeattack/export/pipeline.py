"""One call from a zoo model to a checked engine file: export, quantize, parity, metadata.

`export_engine` is what `edgeattack export` and the demo run: ONNX fp32/fp16, or int8 (static QDQ
calibrated on a dataset, or dynamic), then a parity check against the PyTorch model on real
images whose report is logged and stored in the engine's metadata.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError
from edgeattack.export.metadata import EngineMetadata
from edgeattack.export.onnx_export import export_onnx
from edgeattack.export.parity import ParityReport, check_parity, record_parity
from edgeattack.export.quantize import PRESETS, quantize_dynamic_int8, quantize_static_qdq

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
QUANTIZATIONS = ("static", "dynamic")


@dataclass(frozen=True)
class ExportOutcome:
    """The engine written, its metadata (parity included) and the parity report."""

    path: Path
    metadata: EngineMetadata
    parity: ParityReport | None


def export_engine(
    model: Any,
    out: str | Path,
    *,
    precision: str = "fp32",
    quantization: str = "static",
    calibration: ImageDataset | None = None,
    calibration_images: int = 128,
    preset: str = "cpu",
    per_channel: bool = True,
    parity_data: ImageDataset | None = None,
    parity_images: int = 256,
    opset: int | None = None,
) -> ExportOutcome:
    """Export ZooModel `model` to the ONNX engine `out` at `precision` and check it against the model.

    int8 needs `quantization`: "static" (QDQ, calibrated on `calibration_images` images of
    `calibration`, `preset` "cpu" = MatMul/Gemm only) or "dynamic" (batch-dependent outputs).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and quantization not in QUANTIZATIONS:
        raise ConfigError(f"unknown int8 quantization {quantization!r}; choose one of {', '.join(QUANTIZATIONS)}")
    if precision == "int8" and quantization == "static" and calibration is None:
        raise ConfigError("static int8 needs calibration images (--calib-data/--calib-split)")
    if preset not in PRESETS:
        raise ConfigError(f"unknown QDQ preset {preset!r}; choose one of {', '.join(PRESETS)}")
    out = Path(out)
    if out.suffix != ".onnx":
        raise ConfigError(f"an ONNX engine path must end in .onnx, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    opset_kw = {} if opset is None else {"opset": opset}
    if precision in ("fp32", "fp16"):
        metadata = export_onnx(model, out, precision=precision, **opset_kw)
    else:
        with tempfile.TemporaryDirectory(prefix="edgeattack-export-") as work:
            fp32 = Path(work) / "fp32.onnx"
            export_onnx(model, fp32, precision="fp32", **opset_kw)
            if quantization == "static":
                assert calibration is not None
                metadata = quantize_static_qdq(
                    fp32, out, calibration, num_images=calibration_images, preset=preset, per_channel=per_channel
                )
            else:
                metadata = quantize_dynamic_int8(fp32, out)
    parity = None
    if parity_data is not None and parity_images > 0:
        parity = check_parity(model, out, parity_data, num_images=parity_images)
        metadata = record_parity(out, parity)
        logger.info("%s: %s", out.name, parity.summary())
    return ExportOutcome(path=out, metadata=metadata, parity=parity)
