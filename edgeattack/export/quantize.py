"""ONNX Runtime int8: static QDQ quantization with calibration images, and dynamic quantization.

Static QDQ presets:
- "cpu": only the MatMul/Gemm nodes whose second input is a weight (the Linear layers) get
  QuantizeLinear/DequantizeLinear on their inputs; their outputs stay float. Activations uint8
  (asymmetric), weights int8 (symmetric, per output channel): the U8S8 layout x86 CPUs run
  fastest. Quantizing every op (attention matmuls, Add, Softmax...) makes a small ViT slower than
  fp32 on a CPU because of the extra Q/DQ work, and this graph is what the fake-quant twin
  (`edgeattack.compress.fakequant`) mirrors exactly.
- "full": every op type ONNX Runtime can quantize, with symmetric int8 activations, as TensorRT's
  explicit-quantization path expects.

Dynamic int8 quantizes MatMul weights ahead of time and each activation tensor at run time from
its own min/max, over the whole batch: one image's logits then depend on the other images in its
batch, so the metadata says `batch_dependent` and engines run such a model one image at a time.

Both run ONNX Runtime's pre-processing first (symbolic shape inference, basic graph optimisation,
ONNX shape inference), which its quantizer needs to know the type and shape of every tensor.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeattack._io import atomic_write_bytes, sha256_file
from edgeattack._lazy import require
from edgeattack.data.base import ImageDataset
from edgeattack.errors import ConfigError, EngineError
from edgeattack.export.metadata import EngineMetadata, read_onnx_metadata
from edgeattack.export.onnx_export import set_onnx_metadata

logger = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "entropy", "percentile", "distribution")


@dataclass(frozen=True)
class QdqPreset:
    """How `quantize_static_qdq` quantizes: which ops, and the activation type and symmetry."""

    name: str
    op_types: tuple[str, ...] | None  # None: every op type ONNX Runtime can quantize
    weights_only_matmul: bool  # only MatMul/Gemm whose B input is a constant weight
    quantize_outputs: bool  # also put Q/DQ on the outputs of the quantized ops
    activation_type: str  # "uint8" or "int8"
    activation_symmetric: bool


PRESETS: dict[str, QdqPreset] = {
    "cpu": QdqPreset("cpu", ("MatMul", "Gemm"), True, False, "uint8", False),
    "full": QdqPreset("full", None, False, True, "int8", True),
}


class ImageCalibrationReader:
    """ONNX Runtime's CalibrationDataReader protocol over float32 [0,1] images, `batch_size` a feed."""

    def __init__(self, images: np.ndarray, input_name: str, batch_size: int = 16) -> None:
        self.images = np.ascontiguousarray(images, dtype=np.float32)
        self.input_name = input_name
        self.batch_size = batch_size
        self._feeds = self._iterate()

    def _iterate(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.images), self.batch_size):
            yield {self.input_name: self.images[start : start + self.batch_size]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)

    def rewind(self) -> None:
        self._feeds = self._iterate()

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._iterate()


def calibration_subset(dataset: ImageDataset, num_images: int, seed: int = 0) -> ImageDataset:
    """`num_images` images drawn without replacement by `seed`, kept in dataset order.

    A random draw rather than the first N: an ImageFolder is sorted by class.
    """
    if num_images <= 0:
        raise ConfigError(f"the number of calibration images must be positive, got {num_images}")
    if num_images >= len(dataset):
        return dataset
    positions = np.sort(np.random.default_rng(seed).choice(len(dataset), size=num_images, replace=False))
    return dataset.subset(positions)


def quantize_static_qdq(
    fp32_onnx: str | Path,
    out_path: str | Path,
    calibration: ImageDataset,
    *,
    num_images: int = 128,
    preset: str = "cpu",
    per_channel: bool = True,
    calibration_method: str = "minmax",
    seed: int = 0,
) -> EngineMetadata:
    """Static int8 quantization of an fp32 edgeattack ONNX file in QDQ format; returns the new metadata.

    Calibration runs `num_images` images of `calibration` (use a train or val split, not the
    images you evaluate on) through the model to fix every activation's scale and zero point.
    """
    quantization = require("onnxruntime.quantization", feature="int8 quantization")
    if preset not in PRESETS:
        raise ConfigError(f"unknown QDQ preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if calibration_method not in CALIBRATION_METHODS:
        raise ConfigError(
            f"unknown calibration method {calibration_method!r}; choose one of {', '.join(CALIBRATION_METHODS)}"
        )
    recipe_preset = PRESETS[preset]
    source = _source_metadata(fp32_onnx)
    if calibration.input_shape != source.input_size:
        raise ConfigError(
            f"calibration images are {calibration.input_shape} but {fp32_onnx} takes {source.input_size}"
        )
    chosen = calibration_subset(calibration, num_images, seed)
    reader = ImageCalibrationReader(np.asarray(chosen.images), source.input_name)
    qtype = quantization.QuantType
    activation_type = qtype.QUInt8 if recipe_preset.activation_type == "uint8" else qtype.QInt8
    extra: dict[str, Any] = {
        "MatMulConstBOnly": recipe_preset.weights_only_matmul,
        "ActivationSymmetric": recipe_preset.activation_symmetric,
        "WeightSymmetric": True,
    }
    if not recipe_preset.quantize_outputs:
        extra["OpTypesToExcludeOutputQuantization"] = list(recipe_preset.op_types or ())
    method = {
        "minmax": quantization.CalibrationMethod.MinMax,
        "entropy": quantization.CalibrationMethod.Entropy,
        "percentile": quantization.CalibrationMethod.Percentile,
        "distribution": quantization.CalibrationMethod.Distribution,
    }[calibration_method]
    with tempfile.TemporaryDirectory(prefix="edgeattack-qdq-") as work:
        prepared, pre_processed = _pre_process(fp32_onnx, Path(work) / "prepared.onnx")
        raw = Path(work) / "quantized.onnx"
        nodes = _weight_matmul_nodes(prepared) if recipe_preset.weights_only_matmul else None
        try:
            quantization.quantize_static(
                str(prepared),
                str(raw),
                reader,
                quant_format=quantization.QuantFormat.QDQ,
                op_types_to_quantize=list(recipe_preset.op_types) if recipe_preset.op_types else None,
                per_channel=per_channel,
                activation_type=activation_type,
                weight_type=qtype.QInt8,
                nodes_to_quantize=nodes,
                calibrate_method=method,
                extra_options=extra,
            )
        except Exception as exc:
            raise EngineError(
                f"static quantization of {fp32_onnx} failed: {str(exc).splitlines()[0][:300]}"
            ) from exc
        recipe = {
            "method": "static_qdq",
            "format": "QDQ",
            "preset": preset,
            "op_types": list(recipe_preset.op_types) if recipe_preset.op_types else "all",
            "weights_only_matmul": recipe_preset.weights_only_matmul,
            "quantize_outputs": recipe_preset.quantize_outputs,
            "quantized_op_types": _quantized_op_types(raw),
            "per_channel": per_channel,
            "calibration_method": calibration_method,
            "calibration_images": len(chosen),
            "calibration_dataset": calibration.spec,
            "calibration_seed": seed,
            "activation_type": recipe_preset.activation_type,
            "activation_symmetric": recipe_preset.activation_symmetric,
            "weight_type": "int8",
            "weight_symmetric": True,
            "float_outputs": True,
            "pre_processed": pre_processed,
            "source_onnx_sha256": sha256_file(fp32_onnx),
            "onnxruntime": _ort_version(),
        }
        metadata = source.replace(precision="int8", quantization=recipe, parity={}, batch_dependent=False)
        _finish(raw, out_path, metadata)
    logger.info(
        "static QDQ int8 (%s preset, %d calibration images of %s) -> %s",
        preset,
        len(chosen),
        calibration.spec,
        out_path,
    )
    return metadata


def quantize_dynamic_int8(
    fp32_onnx: str | Path,
    out_path: str | Path,
    *,
    per_channel: bool = False,
) -> EngineMetadata:
    """Dynamic int8 quantization (MatMul weights int8, activations uint8 scaled per batch at run time).

    ONNX Runtime's dynamic mode has no integer Gemm, so a Gemm classifier head stays float; the
    recipe lists the op types actually quantized. The metadata is marked `batch_dependent`.
    """
    quantization = require("onnxruntime.quantization", feature="int8 quantization")
    source = _source_metadata(fp32_onnx)
    with tempfile.TemporaryDirectory(prefix="edgeattack-dyn-") as work:
        prepared, pre_processed = _pre_process(fp32_onnx, Path(work) / "prepared.onnx")
        raw = Path(work) / "quantized.onnx"
        try:
            quantization.quantize_dynamic(
                str(prepared),
                str(raw),
                op_types_to_quantize=["MatMul", "Gemm"],
                per_channel=per_channel,
                weight_type=quantization.QuantType.QInt8,
                extra_options={"MatMulConstBOnly": True},
            )
        except Exception as exc:
            raise EngineError(
                f"dynamic quantization of {fp32_onnx} failed: {str(exc).splitlines()[0][:300]}"
            ) from exc
        recipe = {
            "method": "dynamic_int8",
            "op_types": ["MatMul", "Gemm"],
            "weights_only_matmul": True,
            "quantized_op_types": _quantized_op_types(raw),
            "per_channel": per_channel,
            "activation_type": "uint8",
            "activation_scales": "per batch, at run time",
            "weight_type": "int8",
            "pre_processed": pre_processed,
            "source_onnx_sha256": sha256_file(fp32_onnx),
            "onnxruntime": _ort_version(),
        }
        metadata = source.replace(precision="int8", quantization=recipe, parity={}, batch_dependent=True)
        _finish(raw, out_path, metadata)
    logger.info("dynamic int8 -> %s (batch-dependent: run one image at a time)", out_path)
    return metadata


def _source_metadata(fp32_onnx: str | Path) -> EngineMetadata:
    path = Path(fp32_onnx)
    if not path.is_file():
        raise EngineError(f"ONNX file {path} does not exist")
    try:
        metadata = read_onnx_metadata(path)
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"cannot read ONNX file {path}: {str(exc).splitlines()[0][:300]}") from exc
    if metadata is None:
        raise EngineError(f"{path} carries no edgeattack metadata: export it with edgeattack first")
    if metadata.precision != "fp32":
        raise ConfigError(f"int8 quantization starts from an fp32 ONNX file; {path} is {metadata.precision}")
    return metadata


@contextlib.contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """Run in `path`: ORT's symbolic shape inference drops `sym_shape_infer_temp.onnx` and an external
    data file into the current directory when it gives up, and would litter the caller's."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _pre_process(source: str | Path, target: Path) -> tuple[Path, bool]:
    """ONNX Runtime's quantization pre-processing; the source itself if it fails (logged)."""
    shape_inference = require("onnxruntime.quantization.shape_inference", feature="int8 quantization")
    source, target = Path(source).resolve(), Path(target).resolve()
    try:
        with _working_directory(target.parent):
            shape_inference.quant_pre_process(str(source), str(target))
    except Exception as exc:
        logger.warning("quantization pre-processing failed (%s); quantizing %s as it is", exc, source)
        return Path(source), False
    return target, True


def _weight_matmul_nodes(path: Path) -> list[str]:
    """Names of the MatMul/Gemm nodes whose B input is a constant weight (the Linear layers).

    ONNX Runtime's `MatMulConstBOnly` is honoured only by the dynamic and QOperator quantizers;
    in QDQ mode the attention matmuls (activation x activation) would be quantized too.
    """
    onnx = require("onnx", feature="int8 quantization")
    graph = onnx.load(str(path)).graph
    constants = {init.name for init in graph.initializer}
    constants |= {n.output[0] for n in graph.node if n.op_type == "Constant"}
    names = [
        node.name
        for node in graph.node
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in constants
    ]
    if not names or any(not name for name in names):
        raise EngineError(f"{path}: found no named MatMul/Gemm node with a constant weight to quantize")
    return names


def _quantized_op_types(path: Path) -> list[str]:
    """Op types that consume a DequantizeLinear output or are integer ops: what ended up int8."""
    onnx = require("onnx", feature="int8 quantization")
    graph = onnx.load(str(path)).graph
    dequantized = {
        n.output[0] for n in graph.node if n.op_type in ("DequantizeLinear", "DynamicQuantizeLinear")
    }
    found = {
        node.op_type
        for node in graph.node
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
        and (any(name in dequantized for name in node.input) or "Integer" in node.op_type)
    }
    return sorted(found)


def _finish(raw: Path, out_path: str | Path, metadata: EngineMetadata) -> None:
    """Embed `metadata` into the quantized model and write it to `out_path` atomically."""
    onnx = require("onnx", feature="int8 quantization")
    proto = onnx.load(str(raw))
    _float_outputs(proto.graph)
    set_onnx_metadata(proto, metadata)
    atomic_write_bytes(out_path, proto.SerializeToString())


def _float_outputs(graph: Any) -> None:
    """Remove a QuantizeLinear -> DequantizeLinear pair that ends at a graph output.

    ONNX Runtime quantizes the output of the last quantized op too; logits rounded to 256 levels
    tie and flip the top-1 class, and no runtime gains from it. The logits stay float.
    """
    producer = {out: node for node in graph.node for out in node.output}
    users: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            users[name] = users.get(name, 0) + 1
    for output in graph.output:
        dq = producer.get(output.name)
        while dq is not None and dq.op_type in ("Cast", "Identity"):
            dq = producer.get(dq.input[0])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear" or users.get(q.output[0], 0) != 1:
            continue
        source = producer.get(q.input[0])
        if source is None or users.get(q.input[0], 0) != 1:
            continue
        stale = q.input[0]
        source.output[list(source.output).index(stale)] = dq.output[0]
        for info in [v for v in graph.value_info if v.name == stale]:
            graph.value_info.remove(info)
        graph.node.remove(q)
        graph.node.remove(dq)


def _ort_version() -> str:
    return str(require("onnxruntime", feature="int8 quantization").__version__)
