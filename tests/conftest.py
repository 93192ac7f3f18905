"""Shared fixtures. Nothing here downloads: timm hub access is forced offline so it fails fast."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("COLUMNS", "200")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """One torch thread: OpenMP threads spin while they wait, which costs 10-30x on a busy 2-core box."""
    try:
        import torch
    except ImportError:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def module_one_thread():
    """One torch thread again for a module whose tests time or sum on tiny models, whatever an earlier
    module left set (`one_torch_thread` sets it once per session); restored after the module."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model():
    """The shipped vit_tiny_digits (read-only: tests must not modify it)."""
    from edgeattack.zoo.factory import create_model

    return create_model("vit_tiny_digits")


@pytest.fixture(scope="session")
def test_set():
    """The digits test split."""
    from edgeattack.data import load_digits_dataset

    return load_digits_dataset("test")


@pytest.fixture(scope="session")
def onnx_engines(tmp_path_factory, model, test_set):
    """ONNX engines of the shipped vit_tiny_digits: {"fp32": path, "int8": static QDQ path}."""
    from edgeattack.data import load_digits_dataset
    from edgeattack.export.pipeline import export_engine

    folder = tmp_path_factory.mktemp("engines")
    calibration = load_digits_dataset("train")
    paths = {"fp32": folder / "vit_fp32.onnx", "int8": folder / "vit_int8.onnx"}
    export_engine(model, paths["fp32"], parity_data=test_set, parity_images=16)
    export_engine(
        model,
        paths["int8"],
        precision="int8",
        calibration=calibration,
        calibration_images=64,
        parity_data=test_set,
        parity_images=16,
    )
    return paths


@pytest.fixture(scope="module")
def fp32(onnx_engines):
    """The fp32 ONNX engine of `onnx_engines`, opened with one ORT thread (per test module)."""
    from edgeattack.engines import open_engine

    with open_engine(onnx_engines["fp32"], intra_op_threads=1) as engine:
        yield engine
