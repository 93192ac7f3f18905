"""The issue-14 table, measured: every family's official checkpoint loaded by edgeattack, against the official outputs.

For each recorded fixture (tests/fixtures/official/<family>: a checkpoint saved in the official
repository's layout, the official code's logits and per-block token counts on four 224x224
images), this loads the checkpoint with `create_model(NAME, checkpoint=FILE, embed_dim=48,
num_heads=3)`, runs it in PyTorch and as the ONNX engine `export_onnx` writes (ONNX Runtime, CPU),
and prints whether it loads, the largest |logit difference|, top-1 agreement and whether the token
counts are equal. Usage:

    python benchmarks/bench_official_parity.py
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "official"
WIDTH = {"embed_dim": 48, "num_heads": 3}
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
FAMILIES = (
    ("DeiT-S (training checkpoint, args)", "deit", "deit_small_patch16_224", "checkpoint.pth"),
    ("DeiT-S distilled (released layout)", "deit_distilled", "deit_small_distilled_patch16_224", "deit_distilled.pth"),
    ("DynamicViT DeiT-S ρ 0.7", "dynamicvit", "dynamicvit_deit_small_patch16_224_r07", "checkpoint-29.pth"),
    ("A-ViT DeiT-S", "avit", "avit_deit_small_patch16_224", "checkpoint.pth"),
    ("ATS DeiT-S (model_state)", "ats", "ats_deit_small_patch16_224", "checkpoint_epoch_00001.pyth"),
    ("Mini-DeiT-S (Cream)", "mini_deit", "mini_deit_small_patch16_224", "checkpoint.pth"),
    ("AdaViT DeiT-S (state_dict_ema)", "adavit", "adavit_deit_small_patch16_224", "model_best.pth.tar"),
)


def inputs01() -> np.ndarray:
    with np.load(FIXTURES / "inputs.npz", allow_pickle=False) as data:
        images = data["images"]
    return (images.astype(np.float32) / np.float32(255.0)).transpose(0, 3, 1, 2).copy()


def counts_of(model: Any, images: Any) -> Any:
    """Per-block token counts [N, depth] as the model reports them, or None for a model without them."""
    import torch

    if getattr(model, "token_sparse", False):
        return model.forward_counts(images)[1].numpy()
    net = model.net
    if hasattr(net, "kept_token_counts"):  # DynamicViT: a fixed schedule
        with torch.no_grad():
            return np.asarray(net.kept_token_counts((images - model.mean) / model.std))
    return None


def measure(name: str, file: Path, workdir: Path) -> dict[str, object]:
    import onnxruntime as ort
    import torch

    from edgeattack.errors import EdgeAttackError
    from edgeattack.export.onnx_export import export_onnx
    from edgeattack.zoo.factory import create_model

    want = dict(np.load(file.parent / "expected.npz", allow_pickle=False))
    try:
        model = create_model(name, checkpoint=file, **WIDTH)
    except EdgeAttackError as exc:
        return {"loads": f"no: {exc}"}
    x = inputs01()
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
        counts = counts_of(model, torch.from_numpy(x))
    path = workdir / f"{name}.onnx"
    export_onnx(model, path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, {session.get_inputs()[0].name: x}), strict=True))
    row: dict[str, object] = {"loads": "yes"}
    for where, got, got_counts in (("torch", logits, counts), ("onnx", outputs["logits"], outputs.get("token_counts"))):
        row[f"{where}_dlogit"] = float(np.max(np.abs(got - want["logits"])))
        row[f"{where}_top1"] = int((got.argmax(1) == want["logits"].argmax(1)).sum())
        if "counts" in want and got_counts is None:  # DynamicViT's engine prunes a fixed schedule, no counts output
            row[f"{where}_counts"] = "fixed (no output)"
        elif "counts" in want:
            row[f"{where}_counts"] = "equal" if np.array_equal(got_counts, want["counts"]) else "differ"
        else:
            row[f"{where}_counts"] = "n/a"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    logging.disable(logging.WARNING)
    start = time.perf_counter()
    lines = [
        "| family | loads? | PyTorch max \\|Δlogit\\| | PyTorch top-1 | PyTorch counts | ONNX max \\|Δlogit\\| "
        "| ONNX top-1 | ONNX counts | outputs vs official |",
        "|---|---|---:|---:|---|---:|---:|---|---|",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for label, family, name, file in FAMILIES:
            row = measure(name, FIXTURES / family / file, Path(tmp))
            if row["loads"] != "yes":
                lines.append(f"| {label} | {row['loads']} | | | | | | | – |")
                continue
            equal = (
                max(row["torch_dlogit"], row["onnx_dlogit"]) <= 1e-4
                and row["torch_top1"] == row["onnx_top1"] == 4
                and "differ" not in (row["torch_counts"], row["onnx_counts"])
            )
            lines.append(
                f"| {label} | yes | {row['torch_dlogit']:.1e} | {row['torch_top1']}/4 | {row['torch_counts']} "
                f"| {row['onnx_dlogit']:.1e} | {row['onnx_top1']}/4 | {row['onnx_counts']} "
                f"| {'equal (≤ 1e-4)' if equal else 'NOT equal'} |"
            )
    print("\n".join(lines))
    print(f"\n{len(FAMILIES)} fixtures, {time.perf_counter() - start:.0f} s (export + ORT included)")


if __name__ == "__main__":
    main()
