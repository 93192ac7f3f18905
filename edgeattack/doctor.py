"""`diagnose()`: what this machine can run, checked rather than assumed. No torch import.

Versions of Python, numpy, onnxruntime and (read from the package metadata, without importing it)
torch; the ONNX Runtime execution providers that *really* work — each available provider gets a
tiny session (a one-node ONNX model built with `onnx.helper`, or shipped bytes without onnx) and
a run, and the providers the session ended up on are reported, so onnxruntime-gpu's silent fall
back to the CPU shows as a fall-back; TensorRT, cuda-python and pycuda versions or why they are
missing; the GPUs (nvidia-smi, else NVML, else cuda-python); Jetson detection from
`/etc/nv_tegra_release` and `/proc/device-tree/model`; and the energy meters that can measure here.
"""

from __future__ import annotations

import base64
import importlib
import importlib.util
import json
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import asdict, is_dataclass
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any

from edgeattack import __version__

__all__ = ["DOCTOR_SCHEMA", "diagnose", "summary_rows", "tiny_onnx_model"]

DOCTOR_SCHEMA = 1

# Relu on a float [1, 4] tensor, opset 13, IR version 8 (what `tiny_onnx_model` builds with onnx.helper).
_TINY_ONNX = base64.b64decode(
    "CAgSEWVkZ2VhdHRhY2stZG9jdG9yOkAKDAoBeBIBeSIEUmVsdRIGZG9jdG9yWhMKAXgSDgoMCAESCAoCCAEKAggEYhMKAXkSDgoMCAESCAoCCAEKAggEQgQKABAN"
)
_TIMEOUT_S = 20


def tiny_onnx_model(*, prefer_onnx: bool = True) -> tuple[bytes, str]:
    """(serialized one-node ONNX model, how it was made): built with onnx.helper when onnx imports."""
    if prefer_onnx:
        try:
            from onnx import TensorProto, helper
        except ImportError:
            pass
        else:
            x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
            y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
            graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "doctor", [x], [y])
            model = helper.make_model(
                graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8, producer_name="edgeattack-doctor"
            )
            return model.SerializeToString(), "onnx.helper"
    return _TINY_ONNX, "shipped bytes"


def _first_line(exc: BaseException | str) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return _metadata.version(name)
        except _metadata.PackageNotFoundError:
            continue
    return None


def _import(module: str) -> tuple[Any | None, str | None]:
    """(module, None) or (None, why it cannot be imported)."""
    try:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return None, "not installed"
    except (ImportError, ValueError) as exc:
        return None, _first_line(exc)
    try:
        return importlib.import_module(module), None
    except Exception as exc:  # a broken install raises more than ImportError (OSError from a .so)
        return None, f"installed but cannot be imported: {_first_line(exc)}"


# ------------------------------------------------------------------------------------------------


def _python() -> dict[str, Any]:
    return {
        "version": platform.python_version(),
        "implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def _numpy() -> dict[str, Any]:
    import numpy

    return {"installed": True, "version": numpy.__version__}


def _torch() -> dict[str, Any]:
    """torch from the package metadata: importing it would cost seconds and is what a board avoids."""
    version = _dist_version("torch")
    if version is None:
        return {"installed": False, "version": None, "reason": "not installed (optional: the PyTorch side only)"}
    return {"installed": True, "version": version, "note": "read from package metadata, not imported"}


def _probe_provider(ort: Any, provider: str, model: bytes) -> dict[str, Any]:
    import numpy as np

    entry: dict[str, Any] = {"name": provider, "works": False, "used": [], "fallback": False}
    options = ort.SessionOptions()
    options.log_severity_level = 3
    requested = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=requested)
        used = list(session.get_providers())
        entry["used"] = used
        x = np.array([[-1.0, 0.0, 0.5, 2.0]], dtype=np.float32)
        (y,) = session.run(None, {"x": x})
        if not np.allclose(y, np.maximum(x, 0)):
            entry["reason"] = "the session ran but returned wrong values"
            return entry
    except Exception as exc:
        entry["reason"] = f"session failed: {_first_line(exc)}"
        return entry
    if provider in used:
        entry["works"] = True
        if provider == "AzureExecutionProvider":
            entry["note"] = "remote-inference provider: registers, but runs no local nodes"
    else:
        entry["fallback"] = True
        entry["reason"] = f"requested {provider}, the session fell back to {', '.join(used)}"
    return entry


def _onnxruntime(probe: bool) -> dict[str, Any]:
    ort, reason = _import("onnxruntime")
    if ort is None:
        return {
            "installed": False,
            "version": None,
            "reason": f"{reason}; pip install 'edgeattack[cpu]' (or onnxruntime-gpu on a CUDA machine)",
        }
    available = list(ort.get_available_providers())
    result: dict[str, Any] = {
        "installed": True,
        "version": ort.__version__,
        "package": next(
            (d for d in ("onnxruntime-gpu", "onnxruntime", "onnxruntime-directml") if _dist_version(d)), None
        ),
        "device": getattr(ort, "get_device", lambda: None)(),
        "available_providers": available,
    }
    if probe:
        model, made_by = tiny_onnx_model()
        result["probe_model"] = made_by
        result["providers"] = [_probe_provider(ort, name, model) for name in available]
        result["working_providers"] = [p["name"] for p in result["providers"] if p["works"]]
    return result


def _tensorrt() -> dict[str, Any]:
    from edgeattack.engines.tensorrt_engine import TENSORRT_INSTALL_HINT

    trt, reason = _import("tensorrt")
    if trt is None:
        return {"installed": False, "version": None, "reason": f"{reason}; {TENSORRT_INSTALL_HINT}"}
    if not hasattr(trt, "Builder"):
        return {"installed": False, "version": None, "reason": "the `tensorrt` module is not NVIDIA's TensorRT"}
    flags = getattr(trt, "BuilderFlag", None)
    return {
        "installed": True,
        "version": str(getattr(trt, "__version__", "unknown")),
        "weakly_typed": bool(flags is not None and hasattr(flags, "FP16")),
        "sparse_weights": bool(flags is not None and hasattr(flags, "SPARSE_WEIGHTS")),
        "output_allocator": hasattr(trt, "IOutputAllocator"),
        "named_tensor_api": hasattr(getattr(trt, "IExecutionContext", None), "execute_async_v3"),
    }


def _cuda_python() -> dict[str, Any]:
    from edgeattack.engines.tensorrt_engine import CUDA_INSTALL_HINT

    rt = None
    reasons = []
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        rt, reason = _import(module)
        if rt is not None:
            break
        reasons.append(f"{module}: {reason}")
    if rt is None:
        return {
            "installed": False,
            "version": None,
            "reason": f"{'; '.join(reasons)}; install {CUDA_INSTALL_HINT}",
        }
    result: dict[str, Any] = {
        "installed": True,
        "version": _dist_version("cuda-python", "cuda-bindings") or "unknown",
        "module": rt.__name__,
    }
    for key, call in (("runtime_version", "cudaRuntimeGetVersion"), ("driver_version", "cudaDriverGetVersion")):
        try:
            err, value = getattr(rt, call)()
            result[key] = _cuda_version(value) if int(err) == 0 else None
        except Exception as exc:
            result[key] = None
            result[f"{key}_error"] = _first_line(exc)
    if result.get("driver_version") in (None, "0.0"):
        result["driver_version"] = None
    try:
        err, count = rt.cudaGetDeviceCount()[:2]
        if int(err) != 0:
            result["devices"] = 0
            result["device_error"] = str(getattr(err, "name", err))
        else:
            result["devices"] = int(count)
    except Exception as exc:
        result["devices"] = 0
        result["device_error"] = _first_line(exc)
    return result


def _cuda_version(value: Any) -> str:
    value = int(value)
    return f"{value // 1000}.{(value % 1000) // 10}"


def _pycuda() -> dict[str, Any]:
    spec = None
    try:
        spec = importlib.util.find_spec("pycuda")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return {"installed": False, "version": None, "reason": "not installed (optional: cuda-python is preferred)"}
    pycuda, reason = _import("pycuda")
    if pycuda is None:
        return {"installed": False, "version": None, "reason": reason}
    result: dict[str, Any] = {"installed": True, "version": str(getattr(pycuda, "VERSION_TEXT", "unknown"))}
    driver, reason = _import("pycuda.driver")
    if driver is None:
        result["device_error"] = reason
        return result
    try:
        driver.init()
        result["devices"] = int(driver.Device.count())
    except Exception as exc:
        result["devices"] = 0
        result["device_error"] = _first_line(exc)
    return result


def _gpus_from_nvidia_smi() -> tuple[list[dict[str, Any]] | None, str]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, "nvidia-smi not found"
    reason = "nvidia-smi printed nothing"
    for fields in ("index,name,driver_version,memory.total,compute_cap", "index,name,driver_version,memory.total"):
        try:
            out = subprocess.run(
                [exe, f"--query-gpu={fields}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=_TIMEOUT_S,
                check=True,
            ).stdout
        except Exception as exc:
            reason = f"nvidia-smi failed: {_first_line(exc)}"
            continue
        devices = []
        keys = fields.split(",")
        for line in out.strip().splitlines():
            values = [v.strip() for v in line.split(",")]
            if len(values) != len(keys):
                continue
            row = dict(zip(keys, values, strict=True))
            devices.append(
                {
                    "index": int(row["index"]) if row["index"].isdigit() else row["index"],
                    "name": row["name"],
                    "driver": row["driver_version"],
                    "memory_total_mib": _to_float(row["memory.total"]),
                    "compute_capability": row.get("compute_cap"),
                }
            )
        return devices, "nvidia-smi"
    return None, reason


def _gpus_from_nvml() -> tuple[list[dict[str, Any]] | None, str]:
    nvml, reason = _import("pynvml")
    if nvml is None:
        return None, f"NVML bindings (nvidia-ml-py): {reason}"
    try:
        nvml.nvmlInit()
    except Exception as exc:
        return None, f"NVML: {_first_line(exc)}"
    try:
        driver = nvml.nvmlSystemGetDriverVersion()
        devices = []
        for i in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            name = nvml.nvmlDeviceGetName(handle)
            try:
                major, minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
                cc = f"{major}.{minor}"
            except Exception:
                cc = None
            devices.append(
                {
                    "index": i,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "driver": driver.decode() if isinstance(driver, bytes) else str(driver),
                    "memory_total_mib": nvml.nvmlDeviceGetMemoryInfo(handle).total / 2**20,
                    "compute_capability": cc,
                }
            )
        return devices, "nvml"
    except Exception as exc:
        return None, f"NVML: {_first_line(exc)}"
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def _gpus_from_cuda_python() -> tuple[list[dict[str, Any]] | None, str]:
    try:
        from edgeattack.engines.tensorrt_engine import CudaPythonRuntime
    except Exception as exc:  # pragma: no cover
        return None, _first_line(exc)
    rt, reason = _import("cuda.bindings.runtime")
    if rt is None:
        rt, reason = _import("cuda.cudart")
    if rt is None:
        return None, f"cuda-python: {reason}"
    try:
        err, count = rt.cudaGetDeviceCount()[:2]
        if int(err) != 0:
            return None, f"cuda-python: cudaGetDeviceCount: {getattr(err, 'name', err)}"
        devices = []
        for i in range(int(count)):
            info = CudaPythonRuntime(rt, i).device_info()
            devices.append(
                {
                    "index": i,
                    "name": info.name,
                    "driver": None,
                    "memory_total_mib": info.total_memory_mib,
                    "compute_capability": info.compute_capability,
                }
            )
        return devices, "cuda-python"
    except Exception as exc:
        return None, f"cuda-python: {_first_line(exc)}"


def _gpus() -> dict[str, Any]:
    reasons = []
    for probe in (_gpus_from_nvidia_smi, _gpus_from_nvml, _gpus_from_cuda_python):
        devices, source = probe()
        if devices:
            return {"devices": devices, "source": source}
        reasons.append(source if devices is None else f"{source}: no GPU")
    return {"devices": [], "source": None, "reason": "; ".join(reasons)}


def _to_float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


_L4T = re.compile(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)")


def _jetson(root: Path) -> dict[str, Any]:
    release_file = root / "etc" / "nv_tegra_release"
    model_file = root / "proc" / "device-tree" / "model"
    release = model = None
    try:
        release = release_file.read_text(errors="replace").strip().splitlines()[0] if release_file.is_file() else None
    except (OSError, IndexError):
        release = None
    try:
        model = model_file.read_bytes().rstrip(b"\0").decode(errors="replace").strip() if model_file.is_file() else None
    except OSError:
        model = None
    l4t = None
    if release:
        match = _L4T.search(release)
        if match:
            l4t = f"{match.group(1)}.{match.group(2)}"
    is_jetson = bool(release) or bool(model and ("jetson" in model.lower() or "tegra" in model.lower()))
    return {"is_jetson": is_jetson, "model": model, "l4t": l4t, "nv_tegra_release": release}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return _jsonable(asdict(value))
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        try:
            return _jsonable(to_dict())
        except Exception:
            pass
    name = getattr(value, "name", None)
    if isinstance(name, str):
        return name
    return str(value)


def _meters(root: Path | None = None) -> dict[str, Any]:
    """`edgeattack.metrics.energy.available_meters()`: (name, works here, what it measures or why not) each."""
    try:
        from edgeattack.metrics.energy import available_meters
    except Exception as exc:
        return {
            "available": False,
            "meters": [],
            "reason": "meters: not available in this build",
            "error": _first_line(exc),
        }
    try:
        try:
            found = available_meters(root=root) if root is not None else available_meters()
        except TypeError:  # an available_meters() without the root keyword
            found = available_meters()
    except Exception as exc:
        return {"available": False, "meters": [], "reason": f"available_meters() failed: {_first_line(exc)}"}
    if isinstance(found, (list, tuple)) and all(
        isinstance(item, (list, tuple)) and len(item) == 3 and isinstance(item[1], bool) for item in found
    ):
        meters: Any = [{"name": str(n), "works": bool(w), "detail": str(d)} for n, w, d in found]
    else:
        meters = _jsonable(found)
    return {"available": True, "meters": meters}


def _summary(report: dict[str, Any]) -> dict[str, Any]:
    trt, cudapy, pycuda = report["tensorrt"], report["cuda_python"], report["pycuda"]
    cuda_lib = cudapy if cudapy.get("installed") else pycuda
    gpu_count = max(len(report["gpus"]["devices"]), int(cudapy.get("devices") or 0), int(pycuda.get("devices") or 0))
    missing = []
    if not trt.get("installed"):
        missing.append("tensorrt")
    if not cuda_lib.get("installed"):
        missing.append("cuda-python (or pycuda)")
    if gpu_count == 0:
        missing.append("an NVIDIA GPU with its driver")
    ort = report["onnxruntime"]
    working = ort.get("working_providers", [])
    return {
        "onnx_engines": bool(ort.get("installed")),
        "onnxruntime_gpu": any(p in working for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")),
        "tensorrt_engines": not missing,
        "tensorrt_missing": missing,
        "gpus": gpu_count,
    }


def diagnose(*, probe_providers: bool = True, root: str | Path = "/") -> dict[str, Any]:
    """A JSON-ready report of this machine's runtimes, devices and meters (no torch import).

    `probe_providers` creates and runs a tiny session per available ONNX Runtime provider;
    `root` is where the Jetson files are looked up (for tests).
    """
    report: dict[str, Any] = {
        "schema_version": DOCTOR_SCHEMA,
        "edgeattack": __version__,
        "python": _python(),
        "numpy": _numpy(),
        "onnxruntime": _onnxruntime(probe_providers),
        "torch": _torch(),
        "tensorrt": _tensorrt(),
        "cuda_python": _cuda_python(),
        "pycuda": _pycuda(),
        "gpus": _gpus(),
        "jetson": _jetson(Path(root)),
        "meters": _meters(None if Path(root) == Path("/") else Path(root)),
    }
    report["summary"] = _summary(report)
    return report


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(component, status, details) rows for a table: status "ok", "missing", "fallback" or "none"."""
    rows: list[tuple[str, str, str]] = []

    def add(name: str, entry: dict[str, Any], detail: str = "") -> None:
        status = "ok" if entry.get("installed") else "missing"
        text = entry.get("version") or ""
        if detail:
            text = f"{text}  {detail}".strip()
        if not entry.get("installed"):
            text = entry.get("reason") or "not installed"
        rows.append((name, status, text))

    py = report["python"]
    rows.append(("python", "ok", f"{py['version']} ({py['implementation']}, {py['machine']})"))
    add("numpy", report["numpy"])
    ort = report["onnxruntime"]
    add("onnxruntime", ort, f"package {ort.get('package')}" if ort.get("package") else "")
    for provider in ort.get("providers", []):
        status = "ok" if provider["works"] else ("fallback" if provider.get("fallback") else "missing")
        detail = f"runs on {', '.join(provider['used'])}" if provider["works"] else provider.get("reason", "")
        if provider.get("note"):
            detail = f"{detail}; {provider['note']}"
        rows.append((f"  {provider['name']}", status, detail))
    add("torch", report["torch"])
    trt = report["tensorrt"]
    trt_detail = ""
    if trt.get("installed"):
        trt_detail = "weakly typed (precision flags)" if trt.get("weakly_typed") else "strongly typed only"
    add("tensorrt", trt, trt_detail)
    cuda = report["cuda_python"]
    cuda_detail = ""
    if cuda.get("installed"):
        cuda_detail = (
            f"runtime {cuda.get('runtime_version')}, driver {cuda.get('driver_version') or 'none'}, "
            f"{cuda.get('devices', 0)} device(s)" + (f" ({cuda['device_error']})" if cuda.get("device_error") else "")
        )
    add("cuda-python", cuda, cuda_detail)
    pycuda = report["pycuda"]
    add("pycuda", pycuda, f"{pycuda.get('devices', 0)} device(s)" if pycuda.get("installed") else "")
    gpus = report["gpus"]
    if gpus["devices"]:
        for gpu in gpus["devices"]:
            cc = f", compute {gpu['compute_capability']}" if gpu.get("compute_capability") else ""
            memory = f", {gpu['memory_total_mib']:.0f} MiB" if gpu.get("memory_total_mib") else ""
            rows.append((f"gpu {gpu['index']}", "ok", f"{gpu['name']}{cc}{memory} (via {gpus['source']})"))
    else:
        rows.append(("gpu", "none", gpus.get("reason", "")))
    jetson = report["jetson"]
    if jetson["is_jetson"]:
        rows.append(("jetson", "ok", f"{jetson.get('model') or 'Jetson'}, L4T {jetson.get('l4t') or '?'}"))
    else:
        rows.append(("jetson", "none", "not a Jetson board"))
    meters = report["meters"]
    found = meters["meters"]
    if not meters["available"]:
        rows.append(("meters", "missing", meters["reason"]))
    elif isinstance(found, list) and all(isinstance(m, dict) and "works" in m for m in found):
        for meter in found:
            rows.append((f"meter {meter['name']}", "ok" if meter["works"] else "none", meter["detail"]))
    else:
        rows.append(("meters", "ok" if found else "none", json.dumps(found) if found else "no meter listed"))
    summary = report["summary"]
    rows.append(
        (
            "tensorrt engines",
            "ok" if summary["tensorrt_engines"] else "missing",
            "can build and run .plan files"
            if summary["tensorrt_engines"]
            else "needs " + ", ".join(summary["tensorrt_missing"]),
        )
    )
    return rows
