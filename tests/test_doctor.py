"""`edgeattack doctor`: the machine report, here on a CPU box without TensorRT or a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import pytest
import typer
from typer.testing import CliRunner

from edgeattack import doctor
from edgeattack.cli.doctor import doctor_command
from edgeattack.doctor import diagnose, summary_rows, tiny_onnx_model


@pytest.fixture(scope="module")
def report() -> dict:
    return diagnose()


def test_report_is_json_and_names_the_basics(report):
    text = json.dumps(report, allow_nan=False)
    assert json.loads(text) == report
    assert report["schema_version"] == doctor.DOCTOR_SCHEMA
    assert report["python"]["version"].count(".") == 2
    assert report["numpy"]["installed"] and report["numpy"]["version"]


def test_cpu_provider_really_works(report):
    ort = report["onnxruntime"]
    assert ort["installed"]
    assert "CPUExecutionProvider" in ort["available_providers"]
    cpu = next(p for p in ort["providers"] if p["name"] == "CPUExecutionProvider")
    assert cpu["works"] and cpu["used"] == ["CPUExecutionProvider"] and not cpu["fallback"]
    assert "CPUExecutionProvider" in ort["working_providers"]


def test_missing_tensorrt_is_reported_with_a_reason(report, monkeypatch):
    trt = report["tensorrt"]
    if trt["installed"]:
        monkeypatch.setitem(sys.modules, "tensorrt", None)
        trt = doctor._tensorrt()
    assert trt["installed"] is False and trt["version"] is None
    assert "pip install tensorrt cuda-python" in trt["reason"] and "JetPack" in trt["reason"]


def test_summary_says_what_tensorrt_engines_need(report):
    summary = report["summary"]
    assert summary["onnx_engines"] is True
    if not report["tensorrt"]["installed"]:
        assert summary["tensorrt_engines"] is False
        assert "tensorrt" in summary["tensorrt_missing"]
    if not report["gpus"]["devices"]:
        assert report["gpus"]["reason"]
    rows = summary_rows(report)
    names = [r[0] for r in rows]
    assert names[0] == "python" and "tensorrt engines" in names
    assert any(name == "meters" or name.startswith("meter ") for name in names)
    assert all(status in ("ok", "missing", "fallback", "none") for _, status, _ in rows)


def test_torch_is_reported_without_importing_it():
    code = (
        "import sys\n"
        "from edgeattack.doctor import diagnose\n"
        "r = diagnose()\n"
        "assert 'torch' not in sys.modules, 'doctor imported torch'\n"
        "print(r['torch'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_tiny_model_from_onnx_and_shipped_bytes_both_run():
    import onnxruntime as ort

    built, how = tiny_onnx_model()
    shipped, how_shipped = tiny_onnx_model(prefer_onnx=False)
    assert how == "onnx.helper" and how_shipped == "shipped bytes"
    for model in (built, shipped):
        entry = doctor._probe_provider(ort, "CPUExecutionProvider", model)
        assert entry["works"], entry


def test_fallback_is_reported_not_hidden():
    """onnxruntime-gpu without a GPU: the session silently runs on the CPU; the doctor says so."""

    class FakeSession:
        def __init__(self, model, sess_options=None, providers=()):
            self.providers = ["CPUExecutionProvider"]

        def get_providers(self):
            return self.providers

        def run(self, names, feed):
            import numpy as np

            return [np.maximum(feed["x"], 0)]

    fake_ort = types.SimpleNamespace(SessionOptions=lambda: types.SimpleNamespace(), InferenceSession=FakeSession)
    entry = doctor._probe_provider(fake_ort, "CUDAExecutionProvider", tiny_onnx_model()[0])
    assert entry["works"] is False and entry["fallback"] is True
    assert "fell back to CPUExecutionProvider" in entry["reason"]


def test_jetson_detection(tmp_path):
    assert doctor._jetson(tmp_path)["is_jetson"] is False
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nv_tegra_release").write_text(
        "# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, DATE: Fri Jul 19 23:24:25 UTC 2024\n"
    )
    (tmp_path / "proc" / "device-tree").mkdir(parents=True)
    (tmp_path / "proc" / "device-tree" / "model").write_bytes(b"NVIDIA Jetson AGX Orin Developer Kit\0")
    jetson = diagnose(probe_providers=False, root=tmp_path)["jetson"]
    assert jetson == {
        "is_jetson": True,
        "model": "NVIDIA Jetson AGX Orin Developer Kit",
        "l4t": "36.3.0",
        "nv_tegra_release": jetson["nv_tegra_release"],
    }


def test_meters_reported_either_way(report, monkeypatch):
    meters = report["meters"]
    assert set(meters) >= {"available", "meters"}
    if not meters["available"]:
        assert meters["reason"]
    monkeypatch.setitem(sys.modules, "edgeattack.metrics.energy", None)
    gone = doctor._meters()
    assert gone["available"] is False and gone["reason"] == "meters: not available in this build"
    fake = types.ModuleType("edgeattack.metrics.energy")
    fake.available_meters = lambda: [("nvml", False, "no GPU"), ("estimate", True, "model-based estimate")]
    monkeypatch.setitem(sys.modules, "edgeattack.metrics.energy", fake)
    found = doctor._meters()
    assert found == {
        "available": True,
        "meters": [
            {"name": "nvml", "works": False, "detail": "no GPU"},
            {"name": "estimate", "works": True, "detail": "model-based estimate"},
        ],
    }
    rows = summary_rows({**report, "meters": found})
    assert ("meter nvml", "none", "no GPU") in rows and ("meter estimate", "ok", "model-based estimate") in rows
    fake.available_meters = lambda: {"nvml": False}  # another shape: passed through as JSON
    assert doctor._meters() == {"available": True, "meters": {"nvml": False}}


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("doctor")(doctor_command)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps `doctor` a sub-command, as in edgeattack's app
        pass

    return app


def test_cli_json_and_table():
    runner = CliRunner()
    result = runner.invoke(_app(), ["doctor", "--json", "--no-probe"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["onnxruntime"]["installed"] and "providers" not in document["onnxruntime"]
    result = runner.invoke(_app(), ["doctor"])
    assert result.exit_code == 0, result.output
    assert "CPUExecutionProvider" in result.output and "tensorrt" in result.output
