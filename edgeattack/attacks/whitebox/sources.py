"""Source models for white-box crafting: zoo names, or int8 engines through their differentiable twin.

A source spec is a zoo model name (`vit_tiny_digits`) or the path of a static-QDQ int8 ONNX engine
(`int8.onnx`): for the latter the engine's source model (named in its metadata) is rebuilt and
wrapped in a FakeQuantTwin that computes on the engine's int8 grids with straight-through
gradients, so the quantized model can be attacked with gradients.

The weight options (`checkpoint`, `pretrained`, `random_weights`) are those of
`edgeattack.zoo.factory.create_model`: a model without shipped weights needs one of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from edgeattack.errors import ConfigError, EngineError


def load_source_model(
    spec: str,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    random_weights: bool = False,
    model_args: Mapping[str, Any] | None = None,
) -> Any:
    """The torch module for one source spec (zoo name, or a QDQ .onnx engine -> its fake-quant twin)."""
    if spec.endswith(".onnx"):
        return int8_twin(
            spec, checkpoint=checkpoint, pretrained=pretrained, random_weights=random_weights, model_args=model_args
        )
    from edgeattack.zoo.factory import create_model

    return create_model(spec, **_weights(checkpoint, pretrained, random_weights), **dict(model_args or {}))


def load_source_models(
    specs: Sequence[str],
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    random_weights: bool = False,
    model_args: Mapping[str, Any] | None = None,
) -> list[Any]:
    """One module per spec; several specs make an ensemble (their logits are averaged)."""
    if not specs:
        raise ConfigError("give at least one source model (--model)")
    return [
        load_source_model(
            spec, checkpoint=checkpoint, pretrained=pretrained, random_weights=random_weights, model_args=model_args
        )
        for spec in specs
    ]


def _weights(checkpoint: str | Path | None, pretrained: bool, random_weights: bool) -> dict[str, Any]:
    """`create_model`'s weight arguments for CLI flags (an unset --pretrained is "not said", not False)."""
    return {"checkpoint": checkpoint, "pretrained": True if pretrained else None, "random_weights": random_weights}


def int8_twin(
    qdq_path: str | Path,
    *,
    checkpoint: str | Path | None = None,
    pretrained: bool = False,
    random_weights: bool = False,
    model_args: Mapping[str, Any] | None = None,
) -> Any:
    """The FakeQuantTwin of a static-QDQ engine, built on the engine's source model (with these weights)."""
    from edgeattack.compress.fakequant import FakeQuantTwin
    from edgeattack.export.metadata import read_onnx_metadata
    from edgeattack.zoo.factory import create_model

    path = Path(qdq_path)
    if not path.is_file():
        raise EngineError(f"engine file {path} does not exist")
    try:
        metadata = read_onnx_metadata(path)
    except Exception as exc:
        raise EngineError(f"cannot read {path} as ONNX: {exc}") from exc
    if metadata is None:
        raise EngineError(f"{path} carries no edgeattack metadata: cannot tell which model it was exported from")
    method = metadata.quantization.get("method") if metadata.quantization else None
    if method != "static_qdq":
        raise ConfigError(
            f"{path} is not a static QDQ int8 engine (precision {metadata.precision}, method {method}); "
            "a differentiable twin needs the engine's fixed activation scales"
        )
    model = create_model(
        metadata.source_model, **_weights(checkpoint, pretrained, random_weights), **dict(model_args or {})
    )
    if metadata.source_sha256 and model.weights_sha256 != metadata.source_sha256:
        raise EngineError(
            f"{path} was exported from other weights of {metadata.source_model} "
            f"(sha256 {metadata.source_sha256[:12]} vs {model.weights_sha256[:12]}, here {model.weights_source}); "
            "pass the same --checkpoint or --pretrained as the export"
        )
    return FakeQuantTwin(model, path)
