"""Which NVML device is CUDA device N: by PCI bus id or UUID, never by assuming the indices agree.

NVML numbers GPUs in its own (PCI) order and ignores `CUDA_VISIBLE_DEVICES`; CUDA numbers the
visible GPUs fastest first by default (`CUDA_DEVICE_ORDER=FASTEST_FIRST`), or by PCI bus id with
`CUDA_DEVICE_ORDER=PCI_BUS_ID`. So `cuda:1` is often not NVML index 1. `nvml_handle_for_cuda_device`
finds the NVML handle of a CUDA ordinal, most reliable first:

1. NVML sees one GPU and the ordinal is 0: that GPU (nothing else can be meant).
2. A PCI bus id given by the caller (the engine's device, e.g. `DeviceInfo.pci_bus_id`), or asked
   from CUDA itself (`cuda_pci_bus_id`: cuda-python's `cudaDeviceGetPCIBusId`/`cuDeviceGetPCIBusId`,
   pycuda's `Device(i).pci_bus_id()`, or the driver library `libcuda` through ctypes; all honour
   `CUDA_VISIBLE_DEVICES` and `CUDA_DEVICE_ORDER`), then `nvmlDeviceGetHandleByPciBusId`.
3. `CUDA_VISIBLE_DEVICES` parsed as CUDA does: a `GPU-<uuid>` entry (or unique prefix) is matched
   against `nvmlDeviceGetUUID`; an integer entry (or the ordinal itself when the variable is unset)
   is a position in CUDA's enumeration, which is NVML's PCI order only under
   `CUDA_DEVICE_ORDER=PCI_BUS_ID`. Under the default fastest-first order with several GPUs the
   answer is unknown: a MeterError says so and how to fix it, never a guess.

Stdlib only; NVML is whatever module object the caller passes (pynvml or a fake).
"""

from __future__ import annotations

import ctypes
import importlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edgeattack.metrics.energy.base import MeterError

__all__ = [
    "GpuId",
    "cuda_pci_bus_id",
    "normalise_pci_bus_id",
    "nvml_gpus",
    "nvml_handle_for_cuda_device",
    "pick_visible_gpu",
    "visible_device_entries",
]

PciLookup = Callable[[int], "str | None"]


def _text(value: Any) -> str:
    return value.decode(errors="replace").rstrip("\0") if isinstance(value, bytes) else str(value)


def normalise_pci_bus_id(bus_id: str) -> str:
    """`domain:bus:device.function` in NVML's form (`00000000:3b:00.0`, lower case), whatever the input's widths.

    CUDA writes `0000:3B:00.0`, NVML `00000000:3B:00.0`; both name the same GPU.
    """
    text = _text(bus_id).strip().lower()
    try:
        head, function = text.rsplit(".", 1) if "." in text else (text, "0")
        parts = head.split(":")
        if len(parts) == 2:
            parts = ["0", *parts]
        domain, bus, device = (int(p, 16) for p in parts)
        return f"{domain:08x}:{bus:02x}:{device:02x}.{int(function, 16):x}"
    except ValueError as exc:
        raise MeterError(f"not a PCI bus id: {bus_id!r}") from exc


@dataclass(frozen=True)
class GpuId:
    """One GPU as NVML (or nvidia-smi) lists it: its index there, UUID and PCI bus id."""

    nvml_index: int
    uuid: str | None
    pci_bus_id: str | None


def nvml_gpus(lib: Any) -> list[GpuId]:
    """Every GPU NVML lists, with its UUID and PCI bus id where NVML answers (after `nvmlInit`)."""
    gpus = []
    for index in range(int(lib.nvmlDeviceGetCount())):
        handle = lib.nvmlDeviceGetHandleByIndex(index)
        try:
            uuid: str | None = _text(lib.nvmlDeviceGetUUID(handle))
        except Exception:
            uuid = None
        try:
            bus: str | None = normalise_pci_bus_id(_text(lib.nvmlDeviceGetPciInfo(handle).busId))
        except Exception:
            bus = None
        gpus.append(GpuId(index, uuid, bus))
    return gpus


def visible_device_entries(environ: Mapping[str, str]) -> list[str] | None:
    """`CUDA_VISIBLE_DEVICES` split as CUDA reads it (None when unset); CUDA stops at the first bad entry."""
    raw = environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    entries = []
    for token in raw.split(","):
        token = token.strip()
        if not token or not (token.isdigit() or token.startswith(("GPU-", "MIG-"))):
            break
        entries.append(token)
    return entries


def pick_visible_gpu(gpus: list[GpuId], cuda_index: int, environ: Mapping[str, str]) -> tuple[GpuId | None, str]:
    """The GPU that CUDA ordinal `cuda_index` names, from the environment alone; (None, why) when unknown.

    `gpus` are the GPUs NVML (or nvidia-smi) lists. The reason says which rule decided.
    """
    if cuda_index < 0:
        return None, f"CUDA device index must be >= 0, got {cuda_index}"
    if not gpus:
        return None, "no GPU is listed"
    entries = visible_device_entries(environ)
    order = environ.get("CUDA_DEVICE_ORDER", "FASTEST_FIRST").strip().upper() or "FASTEST_FIRST"
    where = f"CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES')!r}" if entries is not None else "all GPUs visible"
    if entries is not None:
        if cuda_index >= len(entries):
            return None, f"CUDA device {cuda_index} is not visible ({where} lists {len(entries)})"
        entry = entries[cuda_index]
    else:
        entry = str(cuda_index)
    if entry.startswith("MIG-"):
        return None, f"CUDA device {cuda_index} is the MIG instance {entry}: NVML energy is per physical GPU"
    if entry.startswith("GPU-"):
        matches = [g for g in gpus if g.uuid and g.uuid.lower().startswith(entry.lower())]
        if len(matches) == 1:
            return matches[0], f"UUID {matches[0].uuid} from {where}"
        return None, f"{len(matches)} GPUs have a UUID starting {entry} ({where})"
    physical = int(entry)
    if len(gpus) == 1:
        return (gpus[0], f"the only GPU ({where})") if physical == 0 else (None, f"no GPU {physical}: one is listed")
    if order == "PCI_BUS_ID":
        if any(g.pci_bus_id is None for g in gpus):
            return None, "NVML does not give every GPU's PCI bus id"
        ordered = sorted(gpus, key=lambda g: g.pci_bus_id or "")
        if physical >= len(ordered):
            return None, f"no GPU {physical} in PCI order ({len(ordered)} GPUs)"
        chosen = ordered[physical]
        return chosen, f"PCI bus order position {physical} ({chosen.pci_bus_id}), CUDA_DEVICE_ORDER=PCI_BUS_ID, {where}"
    return None, (
        f"CUDA numbers the {len(gpus)} GPUs fastest first (CUDA_DEVICE_ORDER={order}), an order NVML cannot "
        "reproduce: install cuda-python (or pycuda) so CUDA names the PCI bus id, or set CUDA_DEVICE_ORDER=PCI_BUS_ID"
    )


def _from_cuda_python(cuda_index: int) -> str | None:
    for module, call in (("cuda.bindings.runtime", "cudaDeviceGetPCIBusId"), ("cuda.cudart", "cudaDeviceGetPCIBusId")):
        try:
            rt = importlib.import_module(module)
        except ImportError:
            continue
        err, bus = getattr(rt, call)(32, cuda_index)[:2]
        return _text(bus) if int(err) == 0 else None
    return None


def _from_pycuda(cuda_index: int) -> str | None:
    try:
        driver = importlib.import_module("pycuda.driver")
    except ImportError:
        return None
    driver.init()
    return _text(driver.Device(cuda_index).pci_bus_id())


def _from_libcuda(cuda_index: int) -> str | None:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    if lib.cuInit(0) != 0:
        return None
    device = ctypes.c_int()
    if lib.cuDeviceGet(ctypes.byref(device), cuda_index) != 0:
        return None
    buffer = ctypes.create_string_buffer(32)
    if lib.cuDeviceGetPCIBusId(buffer, len(buffer), device) != 0:
        return None
    return buffer.value.decode()


def cuda_pci_bus_id(cuda_index: int) -> str | None:
    """CUDA's own answer for ordinal `cuda_index` (cuda-python, pycuda, or libcuda via ctypes); None where none works."""
    for lookup in (_from_cuda_python, _from_pycuda, _from_libcuda):
        try:
            found = lookup(cuda_index)
        except Exception:  # a library that is present but cannot answer: try the next
            continue
        if found:
            return found
    return None


def nvml_handle_for_cuda_device(
    lib: Any,
    cuda_index: int,
    *,
    pci_bus_id: str | None = None,
    environ: Mapping[str, str] | None = None,
    cuda_lookup: PciLookup | None = cuda_pci_bus_id,
) -> tuple[Any, dict[str, Any]]:
    """(NVML handle, how it was found) of CUDA device `cuda_index`; MeterError when it cannot be told.

    `lib` is an initialised NVML module. `pci_bus_id` is the device's PCI bus id where the caller
    knows it; `cuda_lookup(index)` asks CUDA (None: do not ask); `environ` defaults to os.environ.
    """
    env = os.environ if environ is None else environ
    count = int(lib.nvmlDeviceGetCount())
    if count == 1 and cuda_index == 0 and pci_bus_id is None:
        return lib.nvmlDeviceGetHandleByIndex(0), {"cuda_index": 0, "nvml_index": 0, "how": "the only GPU NVML sees"}
    bus, source = pci_bus_id, "given by the engine"
    if bus is None and cuda_lookup is not None:
        bus, source = cuda_lookup(cuda_index), "from CUDA"
    if bus:
        normal = normalise_pci_bus_id(bus)
        try:
            handle = lib.nvmlDeviceGetHandleByPciBusId(normal)
        except Exception as exc:
            raise MeterError(f"NVML has no GPU at PCI bus id {normal} (CUDA device {cuda_index}): {exc}") from exc
        return handle, {"cuda_index": cuda_index, "pci_bus_id": normal, "how": f"PCI bus id {source}"}
    chosen, why = pick_visible_gpu(nvml_gpus(lib), cuda_index, env)
    if chosen is None:
        raise MeterError(f"cannot tell which NVML GPU is CUDA device {cuda_index}: {why}")
    if chosen.uuid and hasattr(lib, "nvmlDeviceGetHandleByUUID"):
        handle = lib.nvmlDeviceGetHandleByUUID(chosen.uuid)
    else:
        handle = lib.nvmlDeviceGetHandleByIndex(chosen.nvml_index)
    return handle, {"cuda_index": cuda_index, "nvml_index": chosen.nvml_index, "uuid": chosen.uuid,
                    "pci_bus_id": chosen.pci_bus_id, "how": why}
