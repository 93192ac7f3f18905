"""The ONNX side of a TensorRT build: what it holds and whether it can become the requested plan.

Pure Python, no TensorRT needed: the Q/DQ / dynamic-int8 inspection of the ONNX graph (with
`onnx`, else a byte scan), the edgeattack metadata embedded in it, the checks of the build
options and of the source against TensorRT's explicit-quantization rules, the count of 2:4
sparse weights, and the parser for the builder log's structured-sparsity lines (the sidecar's
`sparse_report`). `edgeattack.export.tensorrt_build` uses these before and after a build.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from edgeattack.errors import ConfigError, EngineError, MissingDependencyError
from edgeattack.export.metadata import METADATA_KEY, EngineMetadata

PRECISIONS = ("fp32", "fp16", "int8")
INT8_HINT = "export the ONNX with `edgeattack export MODEL --precision int8 --preset full` first"

_ELIGIBLE = re.compile(r"\(Sparsity\)\s*Layers eligible for sparse math:\s*(.*)", re.IGNORECASE)
_PICKED = re.compile(r"\(Sparsity\)\s*TRT inference plan picked sparse implementation for layers:\s*(.*)", re.I)


def parse_sparse_report(messages: list[str]) -> dict[str, Any]:
    """The builder log's structured-sparsity lines: eligible layers, layers given sparse kernels, raw lines."""
    eligible: list[str] = []
    picked: list[str] = []
    lines: list[str] = []
    for message in messages:
        for line in str(message).splitlines():
            if "sparsity" not in line.lower():
                continue
            lines.append(line.strip())
            for pattern, target in ((_ELIGIBLE, eligible), (_PICKED, picked)):
                match = pattern.search(line)
                if match:
                    target.extend(name.strip() for name in match.group(1).split(",") if name.strip())
    return {"eligible": eligible, "picked": picked, "lines": lines}


def inspect_onnx_quantization(path: str | Path) -> dict[str, Any]:
    """What kind of quantization an ONNX graph holds: Q/DQ node counts, uint8 zero points, dynamic int8 ops.

    Reads the graph with `onnx` when it is installed; otherwise counts the op types in the protobuf
    bytes (a NodeProto's `op_type` is field 4: tag 0x22, the length, then the name verbatim), which
    answers the same questions except `uint8`.
    """
    path = Path(path)
    try:
        import onnx  # the torch extra: a board may not have it
        from onnx import TensorProto
    except ImportError:
        data = path.read_bytes()
        return {
            "quantize_linear": data.count(_op_type_bytes("QuantizeLinear")),
            "dequantize_linear": data.count(_op_type_bytes("DequantizeLinear")),
            "dynamic": any(
                data.count(_op_type_bytes(op)) for op in ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger")
            ),
            "uint8": None,
            "reader": "bytes",
        }
    model = onnx.load(str(path), load_external_data=False)
    counts = {"QuantizeLinear": 0, "DequantizeLinear": 0}
    dynamic = False
    zero_points: set[str] = set()
    for node in _all_nodes(model.graph):
        if node.op_type in counts:
            counts[node.op_type] += 1
            if node.op_type == "QuantizeLinear" and len(node.input) > 2:
                zero_points.add(node.input[2])
        elif node.op_type in ("DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "QLinearMatMul"):
            dynamic = True
    uint8 = any(init.name in zero_points and init.data_type == TensorProto.UINT8 for init in model.graph.initializer)
    return {
        "quantize_linear": counts["QuantizeLinear"],
        "dequantize_linear": counts["DequantizeLinear"],
        "dynamic": dynamic,
        "uint8": uint8,
        "reader": "onnx",
    }


def _op_type_bytes(op_type: str) -> bytes:
    name = op_type.encode()
    return b"\x22" + bytes([len(name)]) + name


def _all_nodes(graph: Any) -> Any:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.g is not None and len(attribute.g.node):
                yield from _all_nodes(attribute.g)
            for sub in attribute.graphs:
                yield from _all_nodes(sub)


def _onnx_metadata(path: Path) -> EngineMetadata:
    """The edgeattack metadata embedded in an ONNX file (onnx if installed, else onnxruntime)."""
    try:
        from edgeattack.export.metadata import read_onnx_metadata

        metadata = read_onnx_metadata(path)
    except ImportError:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise MissingDependencyError(
                "reading the ONNX file's metadata needs onnx or onnxruntime; pip install 'edgeattack[cpu]'"
            ) from exc
        try:
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise EngineError(f"cannot read ONNX file {path}: {str(exc).splitlines()[0][:300]}") from exc
        text = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        metadata = EngineMetadata.from_json(text) if text else None
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"cannot read ONNX file {path}: {str(exc).splitlines()[0][:300]}") from exc
    if metadata is None:
        raise EngineError(f"{path} carries no edgeattack metadata: export it with `edgeattack export` first")
    return metadata


def _check_options(
    precision: str, sparse: bool, min_batch: int, opt_batch: int, max_batch: int, workspace_mib: int
) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown TensorRT precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if not 1 <= min_batch <= opt_batch <= max_batch:
        raise ConfigError(
            f"the batch profile must satisfy 1 <= min ({min_batch}) <= opt ({opt_batch}) <= max ({max_batch})"
        )
    if workspace_mib < 1:
        raise ConfigError(f"the workspace must be at least 1 MiB, got {workspace_mib}")
    if sparse and precision == "fp32":
        raise ConfigError("2:4 sparse kernels run in fp16 or int8: use --sparse with --precision fp16 or int8")


def _check_source(source: EngineMetadata, quant: dict[str, Any], precision: str, onnx_path: Path) -> None:
    """The ONNX must be able to become a plan of `precision` (TensorRT explicit quantization rules)."""
    is_qdq = quant["quantize_linear"] > 0
    if quant["dynamic"] or source.quantization.get("method") == "dynamic_int8":
        raise ConfigError(
            f"{onnx_path} holds ONNX Runtime dynamic int8 (DynamicQuantizeLinear/MatMulInteger), which TensorRT "
            f"cannot build; {INT8_HINT}"
        )
    if precision == "int8":
        if not is_qdq:
            raise ConfigError(
                f"{onnx_path} has no QuantizeLinear nodes: TensorRT builds int8 only from explicit Q/DQ ONNX "
                f"(implicit calibration is gone in TensorRT 11); {INT8_HINT}"
            )
        if quant["uint8"] or source.quantization.get("activation_type") == "uint8":
            raise ConfigError(
                f"{onnx_path} quantizes activations to uint8 (the 'cpu' preset); TensorRT needs symmetric int8 "
                f"Q/DQ; {INT8_HINT}"
            )
    elif is_qdq:
        raise ConfigError(f"{onnx_path} is an int8 Q/DQ graph: build it with precision int8, not {precision}")
    if source.precision == "fp16" and precision != "fp16":
        raise ConfigError(f"{onnx_path} computes in fp16: build it with precision fp16, not {precision}")


def _count_2to4_weights(onnx_path: Path) -> int | None:
    """How many 2-D initializers are 2:4 sparse (None when onnx is not installed)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return None
    from edgeattack.compress.sparse24 import is_2to4_sparse

    model = onnx.load(str(onnx_path))
    count = 0
    for init in model.graph.initializer:
        if len(init.dims) == 2:
            weight = numpy_helper.to_array(init)
            # ONNX MatMul weights are [in, out] (reduction axis 0); Gemm with transB is [out, in]
            if is_2to4_sparse(weight, axis=0) or is_2to4_sparse(weight, axis=-1):
                count += 1
    return count
