"""On-device bundles: carry one evaluation onto a board that has no torch, and its results back.

A bundle is ONE tar file (plain or gzip) holding everything an evaluation needs:
```
MANIFEST.json           sha256 and size of every other member
bundle.json             the evaluation spec: engines, artifacts, dataset, evaluate settings
engines/<name>          engines to run as they are (.onnx; TensorRT plans with their .json sidecar)
onnx/<name>.onnx        ONNX files from which the board builds a TensorRT plan (`build_on_board`)
artifacts/<name>.npz    perturbation artifacts
data/images.npy ...     the dataset slice: images, labels, indices (written with allow_pickle=False)
```
`create_bundle` writes it on the workstation; `open_bundle` checks it on the board before anything
runs (every member's sha256 against the manifest; missing, extra, duplicate, linked and
path-traversal members refused) and extracts it with tarfile's `data` filter; `run_bundle` runs
`evaluate` on each engine with numpy and a runtime only and writes one result per engine, each
recording the sha256 of the bundle it came from; `merge_results` collects the board's results into
one document of kind "bundle-results", refusing duplicates and results of another bundle.

The package, one concept a module: `layout` (member names, kinds, `Bundle`), `pack` (creating),
`members` (safe tar reading and member checks), `unpack` (opening), `run` (running) and `merge`
(merging results).
"""

from __future__ import annotations

from .layout import (
    BOARD_PRECISIONS,
    BUNDLE_KIND,
    MERGED_KIND,
    Bundle,
    BundleEngine,
    PlanBuilder,
)
from .layout import MANIFEST_KIND as MANIFEST_KIND
from .layout import MANIFEST_NAME as MANIFEST_NAME
from .layout import MERGED_NAME as MERGED_NAME
from .layout import ONNX_SUFFIXES as ONNX_SUFFIXES
from .layout import PLAN_SUFFIXES as PLAN_SUFFIXES
from .layout import SCHEMA_VERSION as SCHEMA_VERSION
from .layout import SPEC_NAME as SPEC_NAME
from .merge import load_merged_results, merge_results
from .pack import create_bundle
from .pack import engine_input_size as engine_input_size
from .pack import engine_metadata as engine_metadata
from .run import run_bundle
from .unpack import open_bundle

__all__ = [
    "BOARD_PRECISIONS",
    "BUNDLE_KIND",
    "MERGED_KIND",
    "Bundle",
    "BundleEngine",
    "PlanBuilder",
    "create_bundle",
    "load_merged_results",
    "merge_results",
    "open_bundle",
    "run_bundle",
]
