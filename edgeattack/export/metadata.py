"""Engine metadata: what an engine expects and where it came from, carried with the engine.

Stored in the ONNX `metadata_props` under the key `edgeattack` (JSON), and as a `<engine>.json`
sidecar for TensorRT plans. Reading it needs only the `onnx` protobuf schema or, without onnx
installed, onnxruntime's `get_modelmeta()` (engines do that).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeattack import __version__
from edgeattack.errors import EngineError

METADATA_KEY = "edgeattack"
METADATA_SCHEMA = 1


@dataclass(frozen=True)
class EngineMetadata:
    """The contract between an exported engine and everything that runs it (DESIGN.md).

    `token_sparsity` is empty except for token-sparse models (ATS, A-ViT, AdaViT), whose engines
    have the extra output `token_counts`: it records the mechanism, depth, num_tokens, drop mode,
    token cap and the architecture (`edgeattack.metrics.tokens.arch_from_metadata`) for GFLOPs.
    """

    input_name: str
    input_shape: tuple[int | str, ...]
    output_names: tuple[str, ...]
    bounds: tuple[float, float]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    labels: tuple[str, ...]
    precision: str
    source_model: str
    source_sha256: str
    quantization: dict[str, Any] = field(default_factory=dict)
    opset: int | None = None
    extra_outputs: tuple[str, ...] = ()
    parity: dict[str, Any] = field(default_factory=dict)
    batch_dependent: bool = False
    exporter: str = ""
    token_sparsity: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    schema_version: int = METADATA_SCHEMA

    @property
    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        dims = self.input_shape[1:]
        if len(dims) != 3 or not all(isinstance(d, int) for d in dims):
            raise EngineError(f"engine input shape {self.input_shape} has no fixed (C, H, W)")
        return tuple(int(d) for d in dims)  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        document = asdict(self)
        for key, value in document.items():
            if isinstance(value, tuple):
                document[key] = list(value)
        return document

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> EngineMetadata:
        try:
            schema = int(doc.get("schema_version", 1))
            if schema > METADATA_SCHEMA:
                raise EngineError(
                    f"engine metadata schema {schema} is newer than this edgeattack ({METADATA_SCHEMA}); upgrade"
                )
            return cls(
                input_name=str(doc["input_name"]),
                input_shape=tuple(doc["input_shape"]),
                output_names=tuple(doc["output_names"]),
                bounds=(float(doc["bounds"][0]), float(doc["bounds"][1])),
                mean=tuple(float(v) for v in doc["mean"]),
                std=tuple(float(v) for v in doc["std"]),
                labels=tuple(str(v) for v in doc.get("labels", ())),
                precision=str(doc["precision"]),
                source_model=str(doc["source_model"]),
                source_sha256=str(doc.get("source_sha256", "")),
                quantization=dict(doc.get("quantization", {})),
                opset=None if doc.get("opset") is None else int(doc["opset"]),
                extra_outputs=tuple(doc.get("extra_outputs", ())),
                parity=dict(doc.get("parity", {})),
                batch_dependent=bool(doc.get("batch_dependent", False)),
                exporter=str(doc.get("exporter", "")),
                token_sparsity=dict(doc.get("token_sparsity") or {}),
                version=str(doc.get("version", "")),
                schema_version=schema,
            )
        except EngineError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise EngineError(f"engine metadata is malformed: {exc!r}") from exc

    @classmethod
    def from_json(cls, text: str) -> EngineMetadata:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise EngineError(f"engine metadata is not JSON: {exc}") from exc

    def replace(self, **changes: Any) -> EngineMetadata:
        document = self.to_dict()
        document.update(changes)
        return EngineMetadata.from_dict(document)


def read_onnx_metadata(path: str | Path) -> EngineMetadata | None:
    """The edgeattack metadata of an ONNX file, or None for an ONNX file exported elsewhere."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return EngineMetadata.from_json(prop.value)
    return None


def sidecar_path(engine_path: str | Path) -> Path:
    """`x.plan` -> `x.plan.json`: where a TensorRT plan's metadata lives."""
    path = Path(engine_path)
    return path.with_name(path.name + ".json")
