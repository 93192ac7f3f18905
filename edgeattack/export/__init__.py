"""Exporters: ONNX fp32/fp16, ONNX Runtime int8 (static QDQ, dynamic), engine metadata.

Only `metadata` is torch-free; import the exporters from their modules (`edgeattack.export.onnx_export`,
`edgeattack.export.quantize`), which pull in torch/onnx when used.
"""

from edgeattack.export.metadata import METADATA_KEY, EngineMetadata, read_onnx_metadata

__all__ = ["METADATA_KEY", "EngineMetadata", "read_onnx_metadata"]
