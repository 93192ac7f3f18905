"""TensorRT plans: builder, sidecar, engine, ONNX Runtime I/O binding, `export --target tensorrt`.

Without TensorRT and a GPU (this CI box) the tests check what can be checked: the clear errors
(missing TensorRT/cuda-python, missing or corrupt sidecar or plan, int8 without Q/DQ), the
compatibility check that refuses a plan from another TensorRT version or GPU (a pure function fed
fake device information), lazy imports, and the whole build/run data path against a *fake*
`tensorrt` module whose "plan" wraps the ONNX and runs it with ONNX Runtime on fake device memory
(so the engine's shapes, buffers, chunking, output allocator and timing logic run for real).

Tests marked `gpu` build real fp16, int8 (explicit Q/DQ) and 2:4-sparse plans from the shipped
models and compare them with ONNX Runtime; they skip, with the reason, where TensorRT or a GPU is
missing.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
from test_torch_line import make_blocker_dir, run_without_torch
from typer.testing import CliRunner

from edgeattack.engines import open_engine
from edgeattack.engines.tensorrt_engine import (
    DeviceInfo,
    TensorRTEngine,
    check_plan_compatibility,
    read_sidecar,
)
from edgeattack.errors import ConfigError, EngineError, MissingDependencyError
from edgeattack.export import tensorrt_build
from edgeattack.export.metadata import sidecar_path
from edgeattack.export.tensorrt_build import (
    build_tensorrt_engine,
    inspect_onnx_quantization,
    onnx_precision_for,
    parse_sparse_report,
)

FAKE_GPU = DeviceInfo(name="NVIDIA Fake Orin", compute_capability="8.7", total_memory_mib=8192.0)


# ------------------------------------------------------------------------------------------------
# exported models (module scope: a few seconds in all)


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory, model) -> dict[str, Path]:
    """fp32, int8 Q/DQ 'full' (TensorRT's layout), int8 Q/DQ 'cpu' (uint8 activations), token-sparse A-ViT."""
    from edgeattack.data import load_digits_dataset
    from edgeattack.export.onnx_export import export_onnx
    from edgeattack.export.quantize import quantize_static_qdq
    from edgeattack.zoo.factory import create_model

    folder = tmp_path_factory.mktemp("trt-onnx")
    paths = {
        "fp32": folder / "vit_fp32.onnx",
        "full": folder / "vit_int8_full.onnx",
        "cpu": folder / "vit_int8_cpu.onnx",
        "avit": folder / "avit.onnx",
    }
    export_onnx(model, paths["fp32"])
    calibration = load_digits_dataset("train")
    quantize_static_qdq(paths["fp32"], paths["full"], calibration, num_images=16, preset="full")
    quantize_static_qdq(paths["fp32"], paths["cpu"], calibration, num_images=16, preset="cpu")
    export_onnx(create_model("avit_tiny_digits"), paths["avit"])
    return paths


@pytest.fixture(scope="module")
def images(test_set) -> np.ndarray:
    return np.ascontiguousarray(test_set.images[:40], dtype=np.float32)


def _ort_outputs(onnx_path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True))


# ------------------------------------------------------------------------------------------------
# a fake TensorRT and a fake CUDA: the plan is JSON + the ONNX, run by ONNX Runtime on fake memory


class FakeCuda:
    """The CUDA runtime interface of `tensorrt_engine` over numpy 'device' memory."""

    library = "fake-cuda"
    version = "0"

    def __init__(self, device: DeviceInfo = FAKE_GPU) -> None:
        self.device = device
        self.memory: dict[int, np.ndarray] = {}
        self._next = itertools.count(1)
        self.host_live = 0
        self.entered = 0

    def device_info(self) -> DeviceInfo:
        return self.device

    def malloc(self, nbytes: int) -> int:
        pointer = next(self._next) * 1 << 20
        self.memory[pointer] = np.zeros(max(int(nbytes), 1), dtype=np.uint8)
        return pointer

    def free(self, pointer: int) -> None:
        del self.memory[pointer]

    def host_alloc(self, nbytes: int) -> np.ndarray:
        self.host_live += 1
        return np.zeros(max(int(nbytes), 1), dtype=np.uint8)

    def host_free(self, array: np.ndarray) -> None:
        self.host_live -= 1

    def htod_async(self, device: int, host: np.ndarray, stream: object) -> None:
        self.memory[device][: host.nbytes] = host.view(np.uint8).ravel()

    def dtoh_async(self, host: np.ndarray, device: int, stream: object) -> None:
        host.view(np.uint8).ravel()[:] = self.memory[device][: host.nbytes]

    def stream_create(self) -> object:
        return "stream"

    def stream_handle(self, stream: object) -> object:
        return 7

    def stream_sync(self, stream: object) -> None:
        return None

    def stream_destroy(self, stream: object) -> None:
        return None

    def event_create(self) -> list[float]:
        return [0.0]

    def event_record(self, event: list[float], stream: object) -> None:
        event[0] = time.perf_counter()

    def event_elapsed_ms(self, start: list[float], end: list[float]) -> float:
        return (end[0] - start[0]) * 1e3

    def event_destroy(self, event: object) -> None:
        return None

    def enter(self) -> None:
        self.entered += 1

    def exit(self) -> None:
        self.entered -= 1


class _Severity:
    def __init__(self, name: str) -> None:
        self.name = name


def make_fake_trt(version: str = "10.3.0", *, strongly_typed: bool = False, dds: bool = False) -> types.ModuleType:
    """A module with the slice of TensorRT's Python API that edgeattack uses."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.memory = {}  # set by the tests to FakeCuda.memory
    trt.deserialized = 0

    class ILogger:
        class Severity:
            INTERNAL_ERROR = _Severity("INTERNAL_ERROR")
            ERROR = _Severity("ERROR")
            WARNING = _Severity("WARNING")
            INFO = _Severity("INFO")
            VERBOSE = _Severity("VERBOSE")

        def __init__(self) -> None:
            pass

    class IOutputAllocator:
        def __init__(self) -> None:
            pass

    class TensorIOMode:
        INPUT = "input"
        OUTPUT = "output"

    flags = {"SPARSE_WEIGHTS": 3} if strongly_typed else {"FP16": 0, "INT8": 1, "SPARSE_WEIGHTS": 3}
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)
    trt.ILogger, trt.IOutputAllocator, trt.TensorIOMode = ILogger, IOutputAllocator, TensorIOMode
    trt.nptype = lambda dtype: np.dtype(dtype).type

    class Input:
        def __init__(self, name: str, shape: tuple) -> None:
            self.name, self.shape = name, shape

    class Network:
        def __init__(self) -> None:
            self.onnx: bytes = b""
            self.inputs: list[Input] = []

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Input:
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: ILogger) -> None:
            self.network, self.errors = network, []

        def parse_from_file(self, path: str) -> bool:
            import onnxruntime as ort

            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            self.network.onnx = Path(path).read_bytes()
            self.network.inputs = [
                Input(i.name, tuple(d if isinstance(d, int) else -1 for d in i.shape)) for i in session.get_inputs()
            ]
            return True

        @property
        def num_errors(self) -> int:
            return 0

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, name: str, low: tuple, opt: tuple, high: tuple) -> None:
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data) or b"fresh"

        def serialize(self) -> bytes:
            return self.data + b"+1"

    class Config:
        def __init__(self) -> None:
            self.flags: list[int] = []
            self.profiles: list[Profile] = []
            self.pool: dict[str, int] = {}
            self.cache: TimingCache | None = None

        def set_flag(self, flag: int) -> None:
            self.flags.append(flag)

        def set_memory_pool_limit(self, pool: str, size: int) -> None:
            self.pool[pool] = size

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return 0

        def create_timing_cache(self, data: bytes) -> TimingCache:
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache | None:
            return self.cache

    class Builder:
        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            self.logger.log(ILogger.Severity.VERBOSE, "tactic chatter that is not kept")
            self.logger.log(ILogger.Severity.WARNING, "fake builder warning")
            if trt.BuilderFlag.SPARSE_WEIGHTS in config.flags:
                self.logger.log(ILogger.Severity.INFO, "(Sparsity) Layers eligible for sparse math: fc1, fc2, qkv")
                self.logger.log(
                    ILogger.Severity.INFO, "(Sparsity) TRT inference plan picked sparse implementation for layers: fc1"
                )
            profile = config.profiles[0].shapes if config.profiles else {}
            header = json.dumps({"profile": profile, "flags": config.flags}).encode()
            return b"FAKEPLAN" + len(header).to_bytes(4, "little") + header + network.onnx

    class Engine:
        def __init__(self, header: dict, onnx: bytes) -> None:
            import onnxruntime as ort

            self.session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
            self.profile = {k: [tuple(s) for s in v] for k, v in header["profile"].items()}
            self.inputs = [i.name for i in self.session.get_inputs()]
            self.outputs = [o.name for o in self.session.get_outputs()]
            self.out_dims = {o.name: o.shape for o in self.session.get_outputs()}
            self.device_memory_size_v2 = 4096

        @property
        def num_io_tensors(self) -> int:
            return len(self.inputs) + len(self.outputs)

        def get_tensor_name(self, i: int) -> str:
            return (self.inputs + self.outputs)[i]

        def get_tensor_mode(self, name: str) -> str:
            return TensorIOMode.INPUT if name in self.inputs else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> str:
            if name in self.inputs:
                return "float32"
            kind = next(o.type for o in self.session.get_outputs() if o.name == name)
            return "int64" if "int64" in kind else "float32"

        def get_tensor_shape(self, name: str) -> tuple:
            return (-1, *self.profile[name][0][1:]) if name in self.inputs else (-1, -1)

        def get_tensor_profile_shape(self, name: str, index: int) -> list[tuple]:
            return self.profile[name]

        def create_execution_context(self) -> Context:
            return Context(self)

    class Context:
        def __init__(self, engine: Engine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple] = {}
            self.addresses: dict[str, int] = {}
            self.allocators: dict[str, IOutputAllocator] = {}
            self.calls = 0

        def set_input_shape(self, name: str, shape: tuple) -> bool:
            low, _, high = self.engine.profile[name]
            if not low[0] <= shape[0] <= high[0]:
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name: str) -> tuple:
            if name in self.engine.inputs:
                return self.shapes[name]
            if dds:
                return (-1, -1)
            batch = self.shapes[self.engine.inputs[0]][0]
            return (batch, self.engine.out_dims[name][1])

        def set_tensor_address(self, name: str, pointer: int) -> bool:
            self.addresses[name] = pointer
            return True

        def set_output_allocator(self, name: str, allocator: IOutputAllocator) -> bool:
            self.allocators[name] = allocator
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            self.calls += 1
            name = self.engine.inputs[0]
            shape = self.shapes[name]
            count = int(np.prod(shape))
            x = trt.memory[self.addresses[name]][: count * 4].view(np.float32).reshape(shape)
            values = self.engine.session.run(None, {name: x})
            for out, value in zip(self.engine.outputs, values, strict=True):
                raw = np.ascontiguousarray(value).view(np.uint8).ravel()
                if out in self.allocators:
                    pointer = self.allocators[out].reallocate_output_async(out, 0, raw.size, 256, stream_handle)
                    if not pointer:
                        return False
                    self.allocators[out].notify_shape(out, value.shape)
                else:
                    pointer = self.addresses[out]
                trt.memory[pointer][: raw.size] = raw
            return True

    class Runtime:
        def __init__(self, logger: ILogger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, data: bytes) -> Engine | None:
            trt.deserialized += 1
            if not data.startswith(b"FAKEPLAN"):
                self.logger.log(ILogger.Severity.ERROR, "Serialization assertion magicTagRead failed")
                return None
            size = int.from_bytes(data[8:12], "little")
            return Engine(json.loads(data[12 : 12 + size]), data[12 + size :])

    class IExecutionContext:
        execute_async_v3 = Context.execute_async_v3

    trt.Builder, trt.OnnxParser, trt.Runtime, trt.IExecutionContext = Builder, OnnxParser, Runtime, IExecutionContext
    return trt


@pytest.fixture
def fake_trt(monkeypatch):
    """Install a fake `tensorrt` and a fake GPU; returns (trt module, FakeCuda)."""
    trt = make_fake_trt()
    cuda = FakeCuda()
    trt.memory = cuda.memory
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(tensorrt_build, "_open_device", lambda index: (cuda.device_info(), "fake-cuda", cuda))
    return trt, cuda


def _fake_plan(fake_trt, onnx_path: Path, folder: Path, **kwargs) -> Path:
    plan = folder / f"{onnx_path.stem}.plan"
    build_tensorrt_engine(onnx_path, plan, **kwargs)
    return plan


# ------------------------------------------------------------------------------------------------
# lazy imports and missing dependencies


def test_tensorrt_modules_import_neither_tensorrt_nor_torch():
    code = (
        "import sys\n"
        "import edgeattack.engines.tensorrt_engine, edgeattack.export.tensorrt_build\n"
        "import edgeattack.doctor, edgeattack.cli.doctor, edgeattack.engines\n"
        "bad = [m for m in ('tensorrt', 'torch', 'pycuda', 'cuda', 'onnx', 'onnxruntime') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_tensorrt_modules_import_where_torch_and_tensorrt_cannot(tmp_path):
    blocker = make_blocker_dir(tmp_path / "blocked")
    code = (
        "import edgeattack.engines.tensorrt_engine, edgeattack.export.tensorrt_build, edgeattack.doctor\n"
        "from edgeattack.engines import open_engine\n"
        "from edgeattack.errors import MissingDependencyError\n"
        "from edgeattack.engines.tensorrt_engine import import_tensorrt\n"
        "try:\n"
        "    import_tensorrt()\n"
        "except MissingDependencyError as exc:\n"
        "    print('MISSING', exc)\n"
    )
    result = run_without_torch(["-c", code], blocker)
    assert result.returncode == 0, result.stderr
    assert "MISSING" in result.stdout and "pip install tensorrt cuda-python" in result.stdout


def test_open_engine_plan_missing_file(tmp_path):
    with pytest.raises(EngineError, match="does not exist"):
        open_engine(tmp_path / "x.plan")
    with pytest.raises(EngineError, match="does not exist"):
        open_engine("x.engine")


def test_plan_without_sidecar_is_refused(tmp_path):
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"not a plan")
    with pytest.raises(EngineError, match="no sidecar"):
        open_engine(plan)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not readable JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"input_name": "images"}', "no 'tensorrt' build record"),
        ('{"input_name": "images", "tensorrt": {"version": "10.3.0"}}', "malformed"),
    ],
)
def test_corrupt_sidecar_is_refused(tmp_path, content, message):
    plan = tmp_path / "model.trt"
    plan.write_bytes(b"plan")
    sidecar_path(plan).write_text(content)
    with pytest.raises(EngineError, match=message):
        read_sidecar(plan)
    with pytest.raises(EngineError, match=message):
        open_engine(plan)


def _sidecar_for(onnx_path: Path, plan: Path, **build: object) -> None:
    from edgeattack.export.metadata import read_onnx_metadata

    metadata = read_onnx_metadata(onnx_path)
    record = {"version": "10.3.0", "device": FAKE_GPU.to_dict(), **build}
    sidecar_path(plan).write_text(json.dumps({**metadata.to_dict(), "tensorrt": record}))


def test_opening_a_plan_without_tensorrt_names_what_to_install(tmp_path, monkeypatch, onnx_models):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    plan = tmp_path / "model.plan"
    plan.write_bytes(b"plan")
    _sidecar_for(onnx_models["fp32"], plan)
    with pytest.raises(MissingDependencyError) as info:
        open_engine(plan)
    text = str(info.value)
    assert "TensorRT" in text and "pip install tensorrt cuda-python" in text and "JetPack" in text


def test_building_without_tensorrt_names_what_to_install(tmp_path, monkeypatch, onnx_models):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match="pip install tensorrt cuda-python"):
        build_tensorrt_engine(onnx_models["fp32"], tmp_path / "m.plan", precision="fp16")
    assert not (tmp_path / "m.plan").exists()


def test_cuda_runtime_without_gpu_or_library_is_a_clear_error(monkeypatch):
    from edgeattack.engines import tensorrt_engine

    for name in ("cuda.bindings.runtime", "cuda.cudart", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match="cuda-python or pycuda"):
        tensorrt_engine.open_cuda_runtime()

    class Err(int):  # what cuda-python answers on a machine without a driver
        name = "cudaErrorInsufficientDriver"

    runtime = types.SimpleNamespace(cudaGetDeviceCount=lambda: (Err(35), None))
    with pytest.raises(MissingDependencyError, match="cudaErrorInsufficientDriver"):
        tensorrt_engine.CudaPythonRuntime(runtime)


# ------------------------------------------------------------------------------------------------
# what may be built


def test_int8_needs_explicit_qdq(tmp_path, onnx_models):
    with pytest.raises(ConfigError, match="--precision int8 --preset full"):
        build_tensorrt_engine(onnx_models["fp32"], tmp_path / "m.plan", precision="int8")


def test_int8_refuses_uint8_activations(tmp_path, onnx_models):
    with pytest.raises(ConfigError, match="uint8") as info:
        build_tensorrt_engine(onnx_models["cpu"], tmp_path / "m.plan", precision="int8")
    assert "--preset full" in str(info.value)


def test_qdq_graph_must_be_built_as_int8(tmp_path, onnx_models):
    with pytest.raises(ConfigError, match="precision int8"):
        build_tensorrt_engine(onnx_models["full"], tmp_path / "m.plan", precision="fp16")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"precision": "fp8"}, "unknown TensorRT precision"),
        ({"precision": "fp32", "sparse": True}, "fp16 or int8"),
        ({"min_batch": 4, "max_batch": 2}, "batch profile"),
        ({"opt_batch": 128, "max_batch": 64}, "batch profile"),
        ({"workspace_mib": 0}, "workspace"),
    ],
)
def test_bad_build_options(tmp_path, onnx_models, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_tensorrt_engine(onnx_models["fp32"], tmp_path / "m.plan", **kwargs)


def test_plan_suffix_and_missing_onnx(tmp_path, onnx_models):
    with pytest.raises(ConfigError, match=r"\.plan/\.engine/\.trt"):
        build_tensorrt_engine(onnx_models["fp32"], tmp_path / "m.onnx")
    with pytest.raises(EngineError, match="does not exist"):
        build_tensorrt_engine(tmp_path / "absent.onnx", tmp_path / "m.plan")


def test_inspect_quantization_with_and_without_onnx(onnx_models, monkeypatch):
    full = inspect_onnx_quantization(onnx_models["full"])
    cpu = inspect_onnx_quantization(onnx_models["cpu"])
    fp32 = inspect_onnx_quantization(onnx_models["fp32"])
    assert full["quantize_linear"] > 0 and full["uint8"] is False and not full["dynamic"]
    assert cpu["quantize_linear"] > 0 and cpu["uint8"] is True
    assert fp32["quantize_linear"] == 0
    monkeypatch.setitem(sys.modules, "onnx", None)  # a board without onnx: scan the bytes
    scanned = inspect_onnx_quantization(onnx_models["full"])
    assert scanned["reader"] == "bytes"
    assert scanned["quantize_linear"] == full["quantize_linear"]
    assert scanned["dequantize_linear"] == full["dequantize_linear"]


def test_onnx_precision_for_weak_and_strong_typing():
    weak, strong = {"weakly_typed": True}, {"weakly_typed": False}
    assert onnx_precision_for("fp16", weak) == "fp32"
    assert onnx_precision_for("fp16", strong) == "fp16"
    assert onnx_precision_for("int8", weak) == onnx_precision_for("int8", strong) == "int8"
    assert onnx_precision_for("fp32", strong) == "fp32"


def test_parse_sparse_report():
    report = parse_sparse_report(
        [
            "[I] (Sparsity) Layers eligible for sparse math: /blocks.0/mlp/fc1/MatMul, /blocks.0/mlp/fc2/MatMul",
            "something else",
            "(Sparsity) TRT inference plan picked sparse implementation for layers: /blocks.0/mlp/fc1/MatMul",
        ]
    )
    assert report["eligible"] == ["/blocks.0/mlp/fc1/MatMul", "/blocks.0/mlp/fc2/MatMul"]
    assert report["picked"] == ["/blocks.0/mlp/fc1/MatMul"]
    assert len(report["lines"]) == 2


# ------------------------------------------------------------------------------------------------
# the compatibility check (pure Python, fake device information)


BUILD = {"version": "10.3.0", "device": {"name": "NVIDIA Jetson AGX Orin", "compute_capability": "8.7"}}
ORIN = DeviceInfo(name="Orin (nvgpu)", compute_capability="8.7")


def test_same_tensorrt_and_gpu_is_accepted():
    same = DeviceInfo(name="NVIDIA Jetson AGX Orin", compute_capability="8.7")
    assert check_plan_compatibility(BUILD, tensorrt_version="10.3.0", device=same) == []


def test_other_tensorrt_version_is_refused():
    same = DeviceInfo(name="NVIDIA Jetson AGX Orin", compute_capability="8.7")
    with pytest.raises(EngineError, match=r"built with TensorRT 10\.3\.0 but this machine has TensorRT 10\.7\.0"):
        check_plan_compatibility(BUILD, tensorrt_version="10.7.0", device=same, plan="m.plan")


def test_other_compute_capability_is_refused_even_when_allowed():
    h100 = DeviceInfo(name="NVIDIA H100 80GB HBM3", compute_capability="9.0")
    for allow in (False, True):
        with pytest.raises(EngineError, match=r"compute capability 8\.7.*compute capability 9\.0"):
            check_plan_compatibility(BUILD, tensorrt_version="10.3.0", device=h100, allow_other_gpu=allow)


def test_other_gpu_of_same_capability_needs_permission():
    with pytest.raises(EngineError, match="allow_other_gpu"):
        check_plan_compatibility(BUILD, tensorrt_version="10.3.0", device=ORIN)
    notes = check_plan_compatibility(BUILD, tensorrt_version="10.3.0", device=ORIN, allow_other_gpu=True)
    assert len(notes) == 1 and "tuned its kernels" in notes[0]


def test_sidecar_without_version_or_device():
    with pytest.raises(EngineError, match="no TensorRT version"):
        check_plan_compatibility({"device": BUILD["device"]}, tensorrt_version="10.3.0", device=ORIN)
    notes = check_plan_compatibility({"version": "10.3.0"}, tensorrt_version="10.3.0", device=ORIN)
    assert any("no compute capability" in n for n in notes)


# ------------------------------------------------------------------------------------------------
# build and run through the fake TensorRT


def test_fake_build_writes_plan_and_sidecar(tmp_path, fake_trt, onnx_models):
    cache = tmp_path / "timing.cache"
    metadata = build_tensorrt_engine(
        onnx_models["fp32"], tmp_path / "vit.plan", precision="fp16", sparse=True, max_batch=16, timing_cache=cache
    )
    assert metadata.precision == "fp16" and "TensorRT 10.3.0" in metadata.exporter
    sidecar_meta, build = read_sidecar(tmp_path / "vit.plan")
    assert sidecar_meta == metadata
    assert build["version"] == "10.3.0"
    assert build["device"]["compute_capability"] == "8.7" and build["device"]["name"] == FAKE_GPU.name
    assert build["build_flags"] == ["FP16", "SPARSE_WEIGHTS"]
    assert build["profile"] == {"input": "images", "min_batch": 1, "opt_batch": 16, "max_batch": 16}
    assert build["sparse_report"]["eligible"] == ["fc1", "fc2", "qkv"]
    assert build["sparse_report"]["picked"] == ["fc1"]
    assert build["sparse_report"]["onnx_2to4_weights"] == 0  # the dense model: none of its weights is 2:4
    assert build["warnings"] == ["fake builder warning"]
    assert build["source_onnx_precision"] == "fp32"
    from edgeattack._io import sha256_file

    assert build["plan_sha256"] == sha256_file(tmp_path / "vit.plan")
    assert cache.read_bytes() == b"fresh+1" and build["timing_cache"]["saved_bytes"] == 7
    build_tensorrt_engine(onnx_models["fp32"], tmp_path / "again.plan", precision="fp32", timing_cache=cache)
    assert cache.read_bytes() == b"fresh+1+1"  # read back and extended
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary file


def _plan_flags(plan: Path) -> list[int]:
    """The builder flags the fake TensorRT saw (they are in the fake plan's header)."""
    data = plan.read_bytes()
    size = int.from_bytes(data[8:12], "little")
    return json.loads(data[12 : 12 + size])["flags"]


def test_fake_build_int8_and_strong_typing(tmp_path, monkeypatch, fake_trt, onnx_models):
    trt = fake_trt[0]
    build_tensorrt_engine(onnx_models["full"], tmp_path / "int8.plan", precision="int8")
    _, build = read_sidecar(tmp_path / "int8.plan")
    # int8 + fp16 for the layers outside Q/DQ, as `trtexec --best`; the builder really got both flags
    assert build["build_flags"] == ["INT8", "FP16"] and build["strongly_typed"] is False
    assert build["int8_fp16"] is True
    assert sorted(_plan_flags(tmp_path / "int8.plan")) == sorted([trt.BuilderFlag.INT8, trt.BuilderFlag.FP16])
    build_tensorrt_engine(onnx_models["full"], tmp_path / "int8-fp32.plan", precision="int8", int8_fp16=False)
    _, build = read_sidecar(tmp_path / "int8-fp32.plan")
    assert build["build_flags"] == ["INT8"] and build["int8_fp16"] is False
    assert _plan_flags(tmp_path / "int8-fp32.plan") == [trt.BuilderFlag.INT8]
    strong = make_fake_trt("11.0.0", strongly_typed=True)
    monkeypatch.setitem(sys.modules, "tensorrt", strong)
    with pytest.raises(ConfigError, match="fp16 ONNX"):
        build_tensorrt_engine(onnx_models["fp32"], tmp_path / "fp16.plan", precision="fp16")
    build_tensorrt_engine(onnx_models["full"], tmp_path / "int8-11.plan", precision="int8")
    _, build = read_sidecar(tmp_path / "int8-11.plan")
    assert build["build_flags"] == [] and build["strongly_typed"] is True


def test_fake_engine_matches_onnxruntime(tmp_path, fake_trt, onnx_models, images):
    cuda = fake_trt[1]
    plan = _fake_plan(fake_trt, onnx_models["fp32"], tmp_path, precision="fp32", max_batch=16, opt_batch=8)
    expected = _ort_outputs(onnx_models["fp32"], images)["logits"]
    engine = TensorRTEngine(plan, cuda=cuda)
    assert (engine.min_batch, engine.opt_batch, engine.max_batch) == (1, 8, 16)
    with engine:
        assert cuda.entered == 1
        got = engine.infer(images)  # 40 images: chunks of 16, 16, 8
        assert engine.last_device_ms is not None and engine.last_device_ms >= 0
        assert engine.last_host_ms >= engine.last_device_ms
        single = engine.infer(images[:1])
        described = engine.describe()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(single, expected[:1], rtol=1e-5, atol=1e-5)
    assert engine.queries == 41
    assert cuda.memory == {} and cuda.host_live == 0 and cuda.entered == 0  # everything released
    assert described["backend"] == "tensorrt" and described["tensorrt"]["version"] == "10.3.0"
    assert described["tensorrt"]["device_memory_bytes"] == 4096
    assert "TensorRT 10.3.0" in described["providers"][0]


def test_fake_engine_token_counts_through_output_allocator(tmp_path, monkeypatch, onnx_models, images):
    trt = make_fake_trt(dds=True)  # every output's shape is data-dependent: the allocator path
    cuda = FakeCuda()
    trt.memory = cuda.memory
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(tensorrt_build, "_open_device", lambda index: (FAKE_GPU, "fake-cuda", cuda))
    plan = _fake_plan(None, onnx_models["avit"], tmp_path, precision="fp32", max_batch=32)
    expected = _ort_outputs(onnx_models["avit"], images)
    with TensorRTEngine(plan, cuda=cuda) as engine:
        outputs = engine.run(images)
        assert engine.extra_outputs == ("token_counts",)
    np.testing.assert_allclose(outputs["logits"], expected["logits"], rtol=1e-5, atol=1e-5)
    assert outputs["token_counts"].dtype == np.int64
    np.testing.assert_array_equal(outputs["token_counts"], expected["token_counts"])
    assert cuda.memory == {}


def test_fake_engine_refuses_other_version_before_deserialising(tmp_path, monkeypatch, fake_trt, onnx_models):
    trt, cuda = fake_trt
    plan = _fake_plan(fake_trt, onnx_models["fp32"], tmp_path, precision="fp32")
    newer = make_fake_trt("10.7.0")
    monkeypatch.setitem(sys.modules, "tensorrt", newer)
    with pytest.raises(EngineError, match=r"TensorRT 10\.3\.0 but this machine has TensorRT 10\.7\.0"):
        TensorRTEngine(plan, cuda=cuda)
    assert newer.deserialized == 0
    other_gpu = FakeCuda(DeviceInfo(name="NVIDIA GeForce RTX 4090", compute_capability="8.9"))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    with pytest.raises(EngineError, match=r"compute capability 8\.7"):
        TensorRTEngine(plan, cuda=other_gpu)
    assert trt.deserialized == 0


def test_fake_engine_replaced_or_corrupt_plan(tmp_path, fake_trt, onnx_models):
    cuda = fake_trt[1]
    plan = _fake_plan(fake_trt, onnx_models["fp32"], tmp_path, precision="fp32")
    plan.write_bytes(b"garbage" * 10)  # the sidecar's sha256 no longer matches
    with pytest.raises(EngineError, match="does not match its sidecar"):
        TensorRTEngine(plan, cuda=cuda)
    document = json.loads(sidecar_path(plan).read_text())
    document["tensorrt"]["plan_sha256"] = None  # no hash to check: TensorRT itself rejects it
    sidecar_path(plan).write_text(json.dumps(document))
    with pytest.raises(EngineError, match=r"corrupt or not a TensorRT plan.*magicTagRead"):
        TensorRTEngine(plan, cuda=cuda)


def test_fake_engine_batch_outside_profile(tmp_path, fake_trt, onnx_models, images):
    cuda = fake_trt[1]
    plan = _fake_plan(fake_trt, onnx_models["fp32"], tmp_path, precision="fp32", min_batch=4, max_batch=8)
    with TensorRTEngine(plan, cuda=cuda) as engine:
        with pytest.raises(EngineError, match=r"batches of 4\.\.8"):
            engine.infer(images[:2])
        got = engine.infer(images[:10])  # chunks of 8 and a short 2 run as the last 4
    np.testing.assert_allclose(got, _ort_outputs(onnx_models["fp32"], images[:10])["logits"], rtol=1e-5, atol=1e-5)


def test_open_engine_dispatches_plans(tmp_path, monkeypatch, fake_trt, onnx_models):
    cuda = fake_trt[1]
    plan = _fake_plan(fake_trt, onnx_models["fp32"], tmp_path, precision="fp32")
    from edgeattack.engines import tensorrt_engine

    monkeypatch.setattr(tensorrt_engine, "open_cuda_runtime", lambda index=0: cuda)
    engine = open_engine(plan)
    assert isinstance(engine, TensorRTEngine) and engine.metadata.input_name == "images"


# ------------------------------------------------------------------------------------------------
# ONNX Runtime I/O binding (runs here on the CPU provider)


def test_onnxruntime_io_binding_matches_plain_run(onnx_models, images):
    plain = open_engine(onnx_models["fp32"])
    bound = open_engine(onnx_models["fp32"], io_binding=True)
    with plain, bound:
        expected = plain.infer(images[:8])
        got = bound.infer(images[:8])
        assert plain.last_device_ms is None  # the CPU path is unchanged
        assert bound.last_device_ms is not None and bound.last_host_ms >= bound.last_device_ms
        assert bound.binding_device == "cpu"
        assert bound.describe()["io_binding"] == {"device": "cpu"}
    np.testing.assert_array_equal(got, expected)


def test_onnxruntime_io_binding_extra_outputs(onnx_models, images):
    with open_engine(onnx_models["avit"], io_binding=True) as engine:
        outputs = engine.run(images[:8])
    expected = _ort_outputs(onnx_models["avit"], images[:8])
    np.testing.assert_array_equal(outputs["token_counts"], expected["token_counts"])


# ------------------------------------------------------------------------------------------------
# CLI


def test_export_target_tensorrt_without_tensorrt_fails_before_exporting(tmp_path, monkeypatch):
    from edgeattack.cli.app import app

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "vit.plan"
    result = CliRunner().invoke(app, ["export", "vit_tiny_digits", "-o", str(out), "--target", "tensorrt"])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "TensorRT" in result.output and "pip install tensorrt cuda-python" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, message",
    [
        (["--sparse"], "only apply with --target tensorrt"),
        (["--max-batch", "8"], "only apply with --target tensorrt"),
        (["--target", "coreml"], "unknown export target"),
        (["--target", "tensorrt", "-o", "x.onnx"], ".plan/.engine/.trt"),
        (["--target", "tensorrt", "-o", "x.plan", "--precision", "int8", "--quantization", "dynamic"], "static"),
        (["--target", "tensorrt", "-o", "x.plan", "--precision", "int8", "--preset", "cpu"], "'full'"),
    ],
)
def test_export_tensorrt_option_errors(tmp_path, args, message):
    from edgeattack.cli.app import app

    base = ["export", "vit_tiny_digits"]
    if "-o" not in args:
        base += ["-o", str(tmp_path / "x.onnx")]
    result = CliRunner().invoke(app, base + args)
    assert result.exit_code == 2, result.output
    assert message in result.output


# ------------------------------------------------------------------------------------------------
# real TensorRT on a real GPU


def _real_tensorrt_reason() -> str | None:
    try:
        from edgeattack.engines.tensorrt_engine import import_tensorrt, open_cuda_runtime

        import_tensorrt()
        open_cuda_runtime()
    except MissingDependencyError as exc:
        return str(exc).splitlines()[0][:200]
    except Exception as exc:  # pragma: no cover - a broken install
        return f"{type(exc).__name__}: {exc}"[:200]
    return None


@pytest.fixture(scope="module")
def real_tensorrt():
    reason = _real_tensorrt_reason()
    if reason is not None:
        pytest.skip(f"needs TensorRT and an NVIDIA GPU: {reason}")


@pytest.mark.gpu
@pytest.mark.parametrize("precision, source", [("fp16", "fp32"), ("int8", "full"), ("fp32", "fp32")])
def test_gpu_plan_matches_onnxruntime(real_tensorrt, tmp_path, onnx_models, test_set, precision, source):
    from edgeattack.export.tensorrt_build import compare_plan_with_onnx, tensorrt_capabilities

    onnx_path = onnx_models[source]
    if precision == "fp16" and not tensorrt_capabilities()["weakly_typed"]:
        pytest.skip("strongly typed TensorRT: fp16 plans come from the fp16 ONNX (covered by the CLI test)")
    plan = tmp_path / f"vit_{precision}.plan"
    build_tensorrt_engine(onnx_path, plan, precision=precision, max_batch=64, opt_batch=32)
    report = compare_plan_with_onnx(plan, onnx_path, test_set.images[:256])
    assert report["top1_agreement"] >= {"fp32": 0.995, "fp16": 0.98, "int8": 0.95}[precision], report
    with TensorRTEngine(plan) as engine:
        engine.infer(test_set.images[:32])
        assert engine.last_device_ms is not None and 0 < engine.last_device_ms <= engine.last_host_ms
    document = json.loads(sidecar_path(plan).read_text())
    document["tensorrt"]["version"] = "0.0.1"
    sidecar_path(plan).write_text(json.dumps(document))
    with pytest.raises(EngineError, match=r"TensorRT 0\.0\.1"):
        TensorRTEngine(plan)


@pytest.mark.gpu
def test_gpu_sparse_plan_reports_sparse_layers(real_tensorrt, tmp_path, test_set):
    from edgeattack.export.onnx_export import export_onnx
    from edgeattack.export.tensorrt_build import compare_plan_with_onnx, onnx_precision_for, tensorrt_capabilities
    from edgeattack.zoo.factory import create_model

    onnx_path = tmp_path / "sparse24.onnx"
    export_onnx(
        create_model("vit_tiny_digits_sparse24"),
        onnx_path,
        precision=onnx_precision_for("fp16", tensorrt_capabilities()),
    )
    plan = tmp_path / "sparse24.plan"
    build_tensorrt_engine(onnx_path, plan, precision="fp16", sparse=True, max_batch=64)
    _, build = read_sidecar(plan)
    report = build["sparse_report"]
    assert build["build_flags"][-1] == "SPARSE_WEIGHTS"
    assert report["onnx_2to4_weights"] > 0
    assert report["lines"], "TensorRT printed no (Sparsity) lines"
    parity = compare_plan_with_onnx(plan, onnx_path, test_set.images[:256])
    assert parity["top1_agreement"] >= 0.98, parity


@pytest.mark.gpu
def test_gpu_token_sparse_plan_token_counts(real_tensorrt, tmp_path, onnx_models, test_set):
    plan = tmp_path / "avit.plan"
    build_tensorrt_engine(onnx_models["avit"], plan, precision="fp32", max_batch=32)
    x = np.ascontiguousarray(test_set.images[:32], dtype=np.float32)
    expected = _ort_outputs(onnx_models["avit"], x)
    with TensorRTEngine(plan) as engine:
        outputs = engine.run(x)
    assert (outputs["logits"].argmax(1) == expected["logits"].argmax(1)).mean() >= 0.97
    assert (outputs["token_counts"] == expected["token_counts"]).mean() >= 0.97


def test_cuda_python_runtime_calls_against_a_fake_cudart():
    """The tuple returns, the pinned host view and the copies, with cuda-python's call signatures."""
    import ctypes

    from edgeattack.engines.tensorrt_engine import CudaPythonRuntime

    class Err(int):
        @property
        def name(self) -> str:
            return "cudaSuccess" if self == 0 else "cudaErrorInvalidValue"

    ok = Err(0)
    keep: dict[int, ctypes.Array] = {}

    def alloc(size: int) -> tuple[Err, int]:
        buffer = (ctypes.c_ubyte * size)()
        keep[ctypes.addressof(buffer)] = buffer
        return ok, ctypes.addressof(buffer)

    def memcpy(dst: int, src: int, count: int, kind: object, stream: object) -> tuple[Err]:
        assert isinstance(dst, int) and isinstance(src, int)
        ctypes.memmove(dst, src, count)
        return (ok,)

    attrs = types.SimpleNamespace(cudaDevAttrComputeCapabilityMajor="major", cudaDevAttrComputeCapabilityMinor="minor")
    rt = types.SimpleNamespace(
        cudaGetDeviceCount=lambda: (ok, 1),
        cudaSetDevice=lambda index: (ok,),
        cudaGetDeviceProperties=lambda index: (
            ok,
            types.SimpleNamespace(name=b"NVIDIA Jetson AGX Orin\0\0\0", totalGlobalMem=64 * 2**30),
        ),
        cudaDeviceAttr=attrs,
        cudaDeviceGetAttribute=lambda attr, index: (ok, {"major": 8, "minor": 7}[attr]),
        cudaMalloc=alloc,
        cudaMallocHost=alloc,
        cudaFree=lambda pointer: (ok,),
        cudaFreeHost=lambda pointer: (ok,),
        cudaMemcpyKind=types.SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2),
        cudaMemcpyAsync=memcpy,
        cudaStreamCreate=lambda: (ok, 1234),
        cudaStreamSynchronize=lambda stream: (ok,),
        cudaEventCreate=lambda: (ok, object()),
        cudaEventRecord=lambda event, stream: (ok,),
        cudaEventSynchronize=lambda event: (ok,),
        cudaEventElapsedTime=lambda start, end: (ok, 1.5),
        cudaMemGetInfo=lambda: (Err(1), 0, 0),
    )
    cuda = CudaPythonRuntime(rt)
    info = cuda.device_info()
    assert info == DeviceInfo("NVIDIA Jetson AGX Orin", "8.7", 0, 64 * 1024.0)
    host = cuda.host_alloc(16)
    assert host.dtype == np.uint8 and host.nbytes == 16 and host.ctypes.data in keep
    host.view(np.float32)[:] = [1, 2, 3, 4]
    device = cuda.malloc(16)
    stream = cuda.stream_create()
    assert cuda.stream_handle(stream) == 1234
    cuda.htod_async(device, host, stream)
    back = cuda.host_alloc(16)
    cuda.dtoh_async(back, device, stream)
    np.testing.assert_array_equal(back.view(np.float32), [1, 2, 3, 4])
    assert cuda.event_elapsed_ms(cuda.event_create(), cuda.event_create()) == 1.5
    assert cuda.memory_info() is None
    rt.cudaFree = lambda pointer: (Err(1),)
    with pytest.raises(EngineError, match="cudaFree failed: cudaErrorInvalidValue"):
        cuda.free(device)


# ------------------------------------------------------------------------------------------------
# the CUDA device is current when TensorRT builds and deserialises (pycuda, cuda-python)


def make_fake_pycuda(log: list, count: int = 2) -> tuple[types.ModuleType, types.ModuleType]:
    """`pycuda` and `pycuda.driver` with the calls PyCudaRuntime makes; contexts log push/pop and the device."""
    package = types.ModuleType("pycuda")
    package.VERSION_TEXT = "2024.1-fake"
    driver = types.ModuleType("pycuda.driver")
    stack: list[int] = []

    class Context:
        def __init__(self, index: int) -> None:
            self.index = index

        def push(self) -> None:
            stack.append(self.index)
            log.append(("push", self.index))

        @staticmethod
        def pop() -> None:
            log.append(("pop", stack.pop()))

    class Device:
        def __init__(self, index: int) -> None:
            self.index = index

        @staticmethod
        def count() -> int:
            return count

        def retain_primary_context(self) -> Context:
            log.append(("retain_primary_context", self.index))
            return Context(self.index)

        def make_context(self) -> Context:  # not used: TensorRT's runtime API works on the primary context
            log.append(("make_context", self.index))
            context = Context(self.index)
            context.push()
            return context

        def compute_capability(self) -> tuple[int, int]:
            return 8, 7

        def name(self) -> str:
            return FAKE_GPU.name

        def total_memory(self) -> int:
            return 8 * 2**30

        def pci_bus_id(self) -> str:
            return f"0000:0{self.index + 1}:00.0"

    driver.init = lambda: None
    driver.Device, driver.Context = Device, Context
    driver.current = lambda: stack[-1] if stack else None
    package.driver = driver
    return package, driver


@pytest.fixture
def fake_pycuda(monkeypatch):
    """cuda-python absent, a fake pycuda with two GPUs; returns (log, driver)."""
    log: list = []
    package, driver = make_fake_pycuda(log)
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "pycuda", package)
    monkeypatch.setitem(sys.modules, "pycuda.driver", driver)
    return log, driver


def test_build_and_deserialise_on_a_nonzero_pycuda_device(tmp_path, monkeypatch, fake_pycuda, onnx_models):
    log, driver = fake_pycuda
    trt = make_fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)

    class Builder(trt.Builder):  # what is current when TensorRT builds
        def __init__(self, logger):
            log.append(("builder", driver.current()))
            super().__init__(logger)

    class Runtime(trt.Runtime):
        def deserialize_cuda_engine(self, data):
            log.append(("deserialize", driver.current()))
            return super().deserialize_cuda_engine(data)

    monkeypatch.setattr(trt, "Builder", Builder)
    monkeypatch.setattr(trt, "Runtime", Runtime)
    plan = tmp_path / "vit.plan"
    build_tensorrt_engine(onnx_models["fp32"], plan, precision="fp32", device_index=1)
    assert log == [("retain_primary_context", 1), ("push", 1), ("builder", 1), ("pop", 1)]
    _, build = read_sidecar(plan)
    assert build["device"]["index"] == 1 and build["device"]["pci_bus_id"] == "0000:02:00.0"
    assert build["device_source"].startswith("pycuda")
    log.clear()
    engine = TensorRTEngine(plan, device_index=1)
    assert log == [("retain_primary_context", 1), ("push", 1), ("deserialize", 1), ("pop", 1)]
    assert engine.device.index == 1 and engine.device.pci_bus_id == "0000:02:00.0"
    from edgeattack.metrics.energy import engine_device

    assert engine_device(engine).spec == "cuda:1" and engine_device(engine).pci_bus_id == "0000:02:00.0"


def test_building_on_a_nonzero_device_without_a_cuda_library_is_refused(tmp_path, monkeypatch, onnx_models):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt())
    for name in ("cuda.bindings.runtime", "cuda.cudart", "pycuda.driver"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingDependencyError, match="building on CUDA device 1 needs cuda-python or pycuda"):
        build_tensorrt_engine(onnx_models["fp32"], tmp_path / "m.plan", precision="fp32", device_index=1)


def test_cuda_python_runtime_makes_its_device_current_and_names_its_bus():
    from edgeattack.engines.cuda_buffers import CudaPythonRuntime, current_device

    class Err(int):
        name = "cudaSuccess"

    ok, calls, state = Err(0), [], {"device": 0}

    def set_device(index):
        calls.append(index)
        state["device"] = index
        return (ok,)

    rt = types.SimpleNamespace(
        cudaGetDeviceCount=lambda: (ok, 2),
        cudaSetDevice=set_device,
        cudaGetDevice=lambda: (ok, state["device"]),
        cudaDeviceGetPCIBusId=lambda length, index: (ok, b"0000:86:00.0\0\0\0"),
        cudaGetDeviceProperties=lambda index: (ok, types.SimpleNamespace(name=b"NVIDIA H100\0", totalGlobalMem=2**30)),
        cudaDeviceAttr=types.SimpleNamespace(cudaDevAttrComputeCapabilityMajor="a", cudaDevAttrComputeCapabilityMinor="b"),
        cudaDeviceGetAttribute=lambda attr, index: (ok, {"a": 9, "b": 0}[attr]),
    )
    cuda = CudaPythonRuntime(rt, 1)
    assert cuda.device_info().pci_bus_id == "0000:86:00.0"
    set_device(0)  # another engine made device 0 current meanwhile
    calls.clear()
    with current_device(cuda):
        assert state["device"] == 1
    assert calls == [1, 0] and state["device"] == 0  # restored


# ------------------------------------------------------------------------------------------------
# optimisation-profile shapes: feature detection, not swallowed errors


class _ProfileEngine:
    def __init__(self, shape, profile=None, error=None, has_getter=True):
        self.shape, self.profile, self.error = shape, profile, error
        if has_getter:
            self.get_tensor_profile_shape = self._get

    def get_tensor_shape(self, name):
        return self.shape

    def _get(self, name, index):
        if self.error is not None:
            raise self.error
        return self.profile


def test_profile_shapes_fall_back_only_where_the_api_lacks_the_call():
    from edgeattack.engines.tensorrt_support import _tensor_profile_shapes

    static = (8, 3, 32, 32)
    assert _tensor_profile_shapes(_ProfileEngine(static, has_getter=False), "images") == (static, static, static)
    dynamic = (-1, 3, 32, 32)
    with pytest.raises(EngineError, match=r"'images' has dynamic shape .* no get_tensor_profile_shape"):
        _tensor_profile_shapes(_ProfileEngine(dynamic, has_getter=False), "images")
    shapes = [(1, 3, 32, 32), (8, 3, 32, 32), (64, 3, 32, 32)]
    assert _tensor_profile_shapes(_ProfileEngine(dynamic, shapes), "images") == tuple(shapes)
    assert _tensor_profile_shapes(_ProfileEngine(static, [(), (), ()]), "images") == (static, static, static)


@pytest.mark.parametrize(
    "engine, message",
    [
        (_ProfileEngine((-1, 3, 32, 32), error=RuntimeError("profile index 0 is out of range")),
         r"optimisation profile 0 of TensorRT input tensor 'images'.*RuntimeError: profile index 0 is out of range"),
        (_ProfileEngine((-1, 3, 32, 32), [(1, 3, 32, 32)]), "no usable optimisation profile for input tensor 'images'"),
        (_ProfileEngine((-1, 3, 32, 32), [(), (), ()]), "no usable optimisation profile"),
        (_ProfileEngine((-1, 3, 32, 32), None), "TensorRT returned None as the profile of input tensor 'images'"),
    ],
)
def test_profile_shape_errors_name_the_tensor_and_the_cause(engine, message):
    from edgeattack.engines.tensorrt_support import _tensor_profile_shapes

    with pytest.raises(EngineError, match=message):
        _tensor_profile_shapes(engine, "images")


def test_a_failing_profile_call_is_an_engine_error_when_opening_a_plan(tmp_path, monkeypatch, fake_trt, onnx_models):
    trt, cuda = fake_trt
    plan = _fake_plan(fake_trt, onnx_models["fp32"], tmp_path, precision="fp32")

    class Runtime(trt.Runtime):
        def deserialize_cuda_engine(self, data):
            engine = super().deserialize_cuda_engine(data)

            def broken(name, index):
                raise RuntimeError("invalid profile")

            engine.get_tensor_profile_shape = broken
            return engine

    monkeypatch.setattr(trt, "Runtime", Runtime)
    with pytest.raises(EngineError, match=r"input tensor 'images'.*RuntimeError: invalid profile"):
        TensorRTEngine(plan, cuda=cuda)
