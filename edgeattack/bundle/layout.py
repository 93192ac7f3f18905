"""What a bundle holds: its member names, kinds and settings, and the opened, verified `Bundle`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeattack.data.base import ImageDataset
from edgeattack.errors import ArtifactError

SCHEMA_VERSION = 1
BUNDLE_KIND = "edgeattack-bundle"
MANIFEST_KIND = "edgeattack-bundle-manifest"
MERGED_KIND = "bundle-results"
MANIFEST_NAME = "MANIFEST.json"
SPEC_NAME = "bundle.json"
MERGED_NAME = "bundle-results.json"
BOARD_PRECISIONS = ("fp32", "fp16", "int8", "best")
ONNX_SUFFIXES = (".onnx",)
PLAN_SUFFIXES = (".plan", ".engine", ".trt")
_MAX_MANIFEST_BYTES = 16 << 20
_DATA_ARRAYS = ("images", "labels", "indices")

PlanBuilder = Callable[[Path, Path, str], Path]
"""Builds a TensorRT plan on the board: `builder(onnx_path, plan_path, precision) -> plan path`."""


@dataclass(frozen=True)
class BundleEngine:
    """One engine entry of a bundle's spec."""

    member: str
    name: str
    format: str
    sha256: str
    build_on_board: bool = False
    precision: str | None = None
    metadata_member: str | None = None

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> BundleEngine:
        return cls(
            member=str(doc["member"]),
            name=str(doc["name"]),
            format=str(doc["format"]),
            sha256=str(doc["sha256"]),
            build_on_board=bool(doc.get("build_on_board", False)),
            precision=doc.get("precision"),
            metadata_member=doc.get("metadata_member"),
        )


@dataclass(frozen=True)
class Bundle:
    """An opened, verified bundle extracted under `root`."""

    path: Path
    sha256: str
    root: Path
    spec: dict[str, Any]
    manifest: dict[str, Any]
    manifest_sha256: str

    @property
    def engines(self) -> tuple[BundleEngine, ...]:
        return tuple(BundleEngine.from_dict(e) for e in self.spec["engines"])

    @property
    def artifacts(self) -> tuple[Path, ...]:
        return tuple(self.member_path(a["member"]) for a in self.spec["artifacts"])

    @property
    def settings(self) -> dict[str, Any]:
        """The evaluate settings the bundle was created with."""
        return dict(self.spec["evaluate"])

    def member_path(self, member: str) -> Path:
        return self.root / member

    def dataset(self) -> ImageDataset:
        """The bundled dataset slice (arrays read with allow_pickle=False)."""
        info = self.spec["dataset"]
        arrays = {}
        for key in _DATA_ARRAYS:
            path = self.member_path(info[key])
            try:
                arrays[key] = np.load(path, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ArtifactError(f"bundle {self.path.name}: cannot read {info[key]}: {exc}") from exc
        if len(arrays["labels"]) != int(info["n_images"]):
            raise ArtifactError(
                f"bundle {self.path.name}: {info['labels']} holds {len(arrays['labels'])} labels, the spec says "
                f"{info['n_images']} images"
            )
        return ImageDataset(
            images=arrays["images"],
            labels=arrays["labels"],
            name=str(info["name"]),
            split=str(info["split"]),
            seed=int(info["seed"]),
            indices=arrays["indices"],
            class_names=tuple(str(c) for c in info.get("class_names", ())),
            selection=str(info.get("selection") or ""),
        )

    def describe(self) -> dict[str, Any]:
        """What a result records about the bundle it came from."""
        return {
            "name": self.path.name,
            "sha256": self.sha256,
            "manifest_sha256": self.manifest_sha256,
            "created": self.spec.get("created"),
        }
