"""Export a zoo model to ONNX (fp32 or fp16) with its engine metadata embedded.

The graph takes float32 images in [0,1] named `images` (dynamic batch axis) and returns float32
`logits`; normalisation is inside the graph (DESIGN.md, Contracts). An fp16 engine computes in
half precision inside but keeps that float32 interface: the model is exported as
`model.half()` between a cast of the input and a cast of the logits, which ONNX Runtime's CPU
provider runs as it is.

The exporter is torch's TorchScript-based one (`dynamo=False`): it is fast (about 1 s for the
digits ViT against 5 s for the dynamo exporter), it names every node after the module that
produced it (`/model/net/blocks/blocks.0/attn/qkv/MatMul`), and at opset 17 it emits one
`LayerNormalization` node per LayerNorm, which ONNX Runtime and TensorRT run as such.

A token-sparse model (ATS, A-ViT, AdaViT: `model.token_sparse`) is exported through its
`forward_counts`, with a second output `token_counts` (int64 [batch, depth], the tokens each block
processes per image, dynamic batch axis), `extra_outputs=("token_counts",)` and the mechanism in
the metadata's `token_sparsity`. With physical dropping the graph holds data-dependent shapes
(ReduceMax -> Range -> ScatterElements / GatherElements), so fewer kept tokens mean less work in
ONNX Runtime too.
"""

from __future__ import annotations

import copy
import io
import logging
import warnings
from pathlib import Path
from typing import Any

from edgeattack._io import atomic_write_bytes
from edgeattack._lazy import require
from edgeattack.engines.base import LOGITS
from edgeattack.errors import ConfigError, EngineError
from edgeattack.export.metadata import METADATA_KEY, EngineMetadata

logger = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = LOGITS
TOKEN_COUNTS = "token_counts"
PRECISIONS = ("fp32", "fp16")
DEFAULT_OPSET = 17
MIN_OPSET = 14  # scaled_dot_product_attention needs 14 (per-axis int8 Q/DQ needs 13)
MAX_OPSET = 20  # the newest opset torch's TorchScript exporter writes


def export_onnx(
    model: Any,
    path: str | Path,
    *,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    example_batch: int = 2,
) -> EngineMetadata:
    """Export ZooModel `model` to `path` and return the metadata embedded in it.

    `precision` is "fp32" or "fp16" (half inside, float32 images in and logits out). The file is
    written atomically: a reader sees the old file or the complete new one.
    """
    torch = require("torch", feature="ONNX export")
    onnx = require("onnx", feature="ONNX export")
    _check_options(precision, opset)
    metadata = _metadata_for(model, precision, opset, torch.__version__)
    token_sparse = bool(getattr(model, "token_sparse", False))
    output_names = list(metadata.output_names)
    was_training = model.training
    module = _export_wrapper(model, half=precision == "fp16", counts=token_sparse).eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.rand((example_batch, *model.config.input_size), generator=generator)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # "legacy exporter"
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # timm's shape asserts
        try:
            torch.onnx.export(
                module,
                (example,),
                buffer,
                input_names=[INPUT_NAME],
                output_names=output_names,
                dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in output_names}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:
            model.train(was_training)
            raise EngineError(
                f"torch.onnx.export failed for {model.model_name} ({precision}, opset {opset}): "
                f"{str(exc).splitlines()[0][:300]}"
            ) from exc
    model.train(was_training)
    proto = onnx.load_from_string(buffer.getvalue())
    set_onnx_metadata(proto, metadata)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise EngineError(f"the exported graph of {model.model_name} is not valid ONNX: {exc}") from exc
    atomic_write_bytes(path, proto.SerializeToString())
    logger.info("exported %s to %s (%s, opset %d)", model.model_name, path, precision, opset)
    return metadata


def set_onnx_metadata(proto: Any, metadata: EngineMetadata) -> None:
    """Put `metadata` into an in-memory ModelProto's `metadata_props` (replacing an older entry)."""
    kept = [(p.key, p.value) for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    for key, value in kept:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, metadata.to_json()


def write_onnx_metadata(path: str | Path, metadata: EngineMetadata) -> Path:
    """Replace the edgeattack metadata of the ONNX file at `path` in place (atomically).

    Weights stored as external data stay where they are: only the graph file is rewritten.
    """
    onnx = require("onnx", feature="ONNX metadata")
    path = Path(path)
    if not path.is_file():
        raise EngineError(f"ONNX file {path} does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise EngineError(f"cannot read ONNX file {path}: {str(exc).splitlines()[0][:300]}") from exc
    set_onnx_metadata(proto, metadata)
    return atomic_write_bytes(path, proto.SerializeToString())


def _check_options(precision: str, opset: int) -> None:
    if precision not in PRECISIONS:
        raise ConfigError(f"ONNX export precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ConfigError(f"ONNX opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")


def _metadata_for(model: Any, precision: str, opset: int, torch_version: str) -> EngineMetadata:
    from edgeattack.engines.torch_engine import metadata_for_model

    if not hasattr(model, "config") or not hasattr(model, "model_name"):
        raise ConfigError("export_onnx needs a zoo model (edgeattack.zoo.create_model), not a bare module")
    metadata = metadata_for_model(model, precision=precision)
    extra: dict[str, Any] = {}
    if getattr(model, "token_sparse", False):
        from edgeattack.sparsity.base import token_sparsity_info

        extra = {"extra_outputs": [TOKEN_COUNTS], "token_sparsity": token_sparsity_info(model)}
    return metadata.replace(
        input_name=INPUT_NAME,
        output_names=[OUTPUT_NAME, *extra.get("extra_outputs", [])],
        opset=opset,
        exporter=f"torch.onnx {torch_version} (torchscript)",
        **extra,
    )


def _export_wrapper(model: Any, *, half: bool, counts: bool = False) -> Any:
    """float32 images -> float32 logits around `model`, half precision inside when `half`.

    Distilled models that return (class, distillation) logits are averaged, as timm does in eval.
    With `counts` (token-sparse models) the wrapper returns (logits, int64 token counts) from
    `model.forward_counts`.
    """
    torch = require("torch", feature="ONNX export")

    class ExportWrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = copy.deepcopy(model).half() if half else model

        def forward(self, images: Any) -> Any:
            images = images.half() if half else images
            if counts:
                logits, token_counts = self.model.forward_counts(images)
                return _float32(logits), token_counts if token_counts.dtype == torch.int64 else token_counts.long()
            logits = self.model(images)
            if isinstance(logits, (tuple, list)):
                logits = (logits[0] + logits[1]) / 2
            return _float32(logits)

    def _float32(logits: Any) -> Any:
        return logits if logits.dtype == torch.float32 else logits.float()  # no Cast node in fp32

    return ExportWrapper()
