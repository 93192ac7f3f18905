"""Recorded outputs of the families' official implementations (tests/fixtures/official), and the checks on them.

Each family's folder holds a checkpoint saved the way its official repository saves one, the
official code's logits (and per-block token counts) on the shared `inputs.npz`, and a README naming
the repository, commit and constructor arguments (`scripts/official_fixtures/` re-records them from
a checkout of the official code; none of that code is part of edgeattack). The fixtures are at a
small width (`SMALL_WIDTH`, 224x224 inputs, 12 blocks, 1000 classes): the keys and the mechanisms
do not depend on width.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures" / "official"
SMALL_WIDTH: dict[str, Any] = {"embed_dim": 48, "num_heads": 3}
"""The builder overrides that give the fixtures' width (`create_model(name, **SMALL_WIDTH)`)."""
TOLERANCE = 1e-4
"""Largest |logit difference| allowed against the official code, in PyTorch and in ONNX Runtime."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def fixture(family: str, name: str = "") -> Path:
    """The path of `name` in `family`'s fixture folder (the folder itself when `name` is empty)."""
    folder = FIXTURES / family
    return folder / name if name else folder


def inputs01() -> np.ndarray:
    """The shared inputs as float32 [4, 3, 224, 224] in [0, 1] (what a ZooModel takes)."""
    with np.load(FIXTURES / "inputs.npz", allow_pickle=False) as data:
        images = data["images"]
    return (images.astype(np.float32) / np.float32(255.0)).transpose(0, 3, 1, 2).copy()


def normalised_inputs() -> Any:
    """The shared inputs as the official models take them: ((x/255) - mean) / std, float32 torch NCHW."""
    import torch

    x = torch.from_numpy(inputs01())
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def expected(family: str) -> dict[str, np.ndarray]:
    """The recorded official outputs of `family` (`logits`, and `counts` for token-sparse families)."""
    with np.load(fixture(family, "expected.npz"), allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def assert_logits_close(got: Any, want: np.ndarray, what: str) -> float:
    """Max |got - want|, asserted <= TOLERANCE, with the same top-1 per image."""
    got = np.asarray(got.detach().cpu() if hasattr(got, "detach") else got, dtype=np.float64)
    diff = float(np.max(np.abs(got - want)))
    assert diff <= TOLERANCE, f"{what}: max |dlogit| {diff:.3g} > {TOLERANCE}"
    assert (got.argmax(1) == want.argmax(1)).all(), f"{what}: top-1 differs"
    return diff


def onnx_outputs(model: Any, tmp_path: Path, images01: np.ndarray) -> dict[str, np.ndarray]:
    """Export ZooModel `model` with edgeattack's exporter and run it in ONNX Runtime on `images01`."""
    import onnxruntime as ort

    from edgeattack.export.onnx_export import export_onnx

    path = tmp_path / f"{model.model_name}.onnx"
    export_onnx(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: images01}), strict=True))


def export_with_cli(tmp_path: Path, name: str, checkpoint: Path) -> dict[str, np.ndarray]:
    """`edgeattack export NAME --checkpoint FILE --model-arg <fixture width>`; the engine's outputs on the inputs.

    Asserts the command succeeds and says it loaded the checkpoint.
    """
    import onnxruntime as ort
    from typer.testing import CliRunner

    from edgeattack.cli.app import app

    out = tmp_path / f"{name}.onnx"
    args = ["export", name, "--checkpoint", str(checkpoint), "--out", str(out)]
    for key, value in SMALL_WIDTH.items():
        args += ["--model-arg", f"{key}={value}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"checkpoint:{checkpoint.name}" in result.output, result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: inputs01()}), strict=True))
