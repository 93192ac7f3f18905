"""The shared training loop: batching, rank slices, determinism, precision, divergence, CLI records."""

from __future__ import annotations

import json
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgeattack.cli.app import app
from edgeattack.data.base import ImageDataset
from edgeattack.devices import Precision
from edgeattack.errors import ConfigError
from edgeattack.training import LoopConfig, StepDiverged, TrainRuntime, run_training, training_session, use_runtime
from edgeattack.training.loop import _plan

runner = CliRunner()


def toy_data(n: int = 40, seed: int = 0) -> ImageDataset:
    rng = np.random.default_rng(seed)
    return ImageDataset(rng.random((n, 1, 6, 6), dtype=np.float32), rng.integers(0, 3, n), name="toy", split="train")


def toy_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def ce_step(net, x, y):
    return torch.nn.functional.cross_entropy(net(x), y), {"mean_pixel": x.mean()}


def train_toy(data: ImageDataset, **config) -> tuple[torch.nn.Module, object]:
    model = toy_model()
    settings = {"epochs": 2, "batch_size": 8, "max_shift": 1, "warmup_epochs": 1, **config}
    result = run_training(
        model, data, ce_step, lambda: torch.optim.AdamW(model.parameters(), lr=1e-2), LoopConfig(**settings)
    )
    return model, result


def test_rank_slices_cover_each_global_batch_once():
    order = np.random.default_rng(0).permutation(17)
    plans = [_plan(order, 8, rank, 2) for rank in range(2)]
    assert [size for size, _, _ in plans[0]] == [8, 8, 1]
    for step in range(3):
        real = [local for plan in plans for _, local, stand_in in [plan[step]] if not stand_in]
        assert sorted(np.concatenate(real).tolist()) == list(range(plans[0][step][0]))
    assert sum(plan[2][2] for plan in plans) == 1  # one rank has no image of the last batch: a weight-0 stand-in
    assert [len(local) for _, local, _ in _plan(order, 8, 0, 1)] == [8, 8, 1]


def test_training_is_deterministic_and_reports_epoch_means():
    first, result = train_toy(toy_data())
    second, again = train_toy(toy_data())
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert result.steps == 10 and len(result.epochs) == 2
    assert set(result.epochs[0]) == {"loss", "mean_pixel"} and np.isfinite(result.epochs[-1]["loss"])
    assert result.epochs == again.epochs
    changed, _ = train_toy(toy_data(), seed=1)
    assert not torch.equal(changed.state_dict()["1.weight"], first.state_dict()["1.weight"])


class LazyImages:
    """A folder-like lazy array: decodes only the positions submitted; refuses to be decoded whole."""

    is_lazy = True

    def __init__(self, images: np.ndarray) -> None:
        self._images, self.shape, self.asked = images, images.shape, []

    def submit(self, positions: np.ndarray) -> Future:
        self.asked.append(len(positions))
        future: Future = Future()
        future.set_result(self._images[np.asarray(positions)])
        return future

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole split was decoded")


def test_lazy_datasets_are_read_batch_by_batch_with_the_same_result():
    eager = toy_data()
    lazy_images = LazyImages(eager.images)
    lazy = ImageDataset(lazy_images, eager.labels, name="toy", split="train")
    from_lazy, _ = train_toy(lazy)
    from_memory, _ = train_toy(eager)
    assert lazy_images.asked and max(lazy_images.asked) <= 8 and sum(lazy_images.asked) == 2 * len(eager)
    for a, b in zip(from_lazy.state_dict().values(), from_memory.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_bf16_on_the_cpu_trains():
    with use_runtime(TrainRuntime(device="cpu", precision=Precision("bf16"))) as runtime:
        model, result = train_toy(toy_data())
        assert runtime.record()["precision"] == "bf16"
    assert all(np.isfinite(e["loss"]) for e in result.epochs)
    assert not torch.equal(model.state_dict()["1.weight"], toy_model().state_dict()["1.weight"])


def test_a_non_finite_loss_stops_before_the_step():
    model = toy_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def nan_step(net, x, y):
        return net(x).sum() * float("nan"), {}

    with pytest.raises(StepDiverged) as info:
        run_training(model, toy_data(), nan_step, lambda: torch.optim.SGD(model.parameters(), lr=0.1),
                     LoopConfig(epochs=1, batch_size=8, check_finite=True))
    assert info.value.kind == "loss" and info.value.result.steps == 0 and "epoch 1/1, step 1/5" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_runtime_checks():
    with pytest.raises(ConfigError, match="multiple of the 2 ranks"):
        run_training(
            toy_model(), toy_data(), ce_step, lambda: None, LoopConfig(epochs=1, batch_size=9),
            runtime=TrainRuntime(world_size=2),
        )
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"), training_session("cpu", "fp16"):
        pass
    with training_session("cpu", "bf16") as runtime:
        assert (runtime.device, runtime.precision.name, runtime.world_size) == ("cpu", "bf16", 1)


def test_train_cli_records_device_and_precision(tmp_path: Path):
    args = ["train", "vit_tiny_digits", "-o", str(tmp_path), "--epochs", "1", "--batch-size", "32", "--limit", "64",
            "--device", "cpu", "--precision", "bf16"]
    result = runner.invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "vit_tiny_digits.train.json").read_text())
    assert (record["device"], record["precision"], record["world_size"]) == ("cpu", "bf16", 1)
    assert np.isfinite(record["train_loss"][0])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    entry = manifest["models"]["vit_tiny_digits"]
    assert entry["extra"]["training"]["precision"] == "bf16" and "--precision bf16" in entry["command"]
    bad = runner.invoke(app, [*args[:-4], "--device", "cuda:3"])
    assert bad.exit_code == 2 and "cuda:3" in bad.output


def test_compress_cli_records_precision(tmp_path: Path):
    result = runner.invoke(
        app,
        ["compress", "--method", "distill", "-o", str(tmp_path), "--epochs", "1", "--limit", "64", "--param",
         "max_steps=2", "--param", "batch_size=16", "--precision", "bf16", "--device", "cpu"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "deit_tiny_digits_distilled.report.json").read_text())
    assert report["training"]["precision"] == "bf16" and report["steps"] == 2
    assert all(np.isfinite(loss) for loss in report["train_loss"])
