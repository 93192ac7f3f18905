"""NVIDIA GPUs through NVML (the `nvidia-ml-py` package, module `pynvml`, imported on first use).

Energy: `nvmlDeviceGetTotalEnergyConsumption` (mJ since the driver loaded; Volta and newer) read at
the start and the end of the window; where it is not supported, `nvmlDeviceGetPowerUsage` (mW)
sampled by a thread (default 20 Hz) and integrated (trapezoid). Both update only every 20-100 ms
(and on Ampere and newer the power reading is a 1-s average), so windows shorter than
`min_window_s` (1 s) carry a warning: repeat the workload with `measure_energy`. The counter
running backwards (a driver reload) or NVML raising mid-window gives no energy, with the reason.

Also sampled: device memory in use (`nvmlDeviceGetMemoryInfo`: the peak and its rise over the
window, all processes on the GPU) and the SM / memory clocks at start and end.

Which GPU: `cuda_device=N` (the default, N=0) is CUDA's device N, the one an engine on `cuda:N`
runs on; it is mapped to NVML by PCI bus id or UUID (`gpu_map`), since NVML's indices follow PCI
order and ignore `CUDA_VISIBLE_DEVICES` while CUDA's follow it (and default to fastest first).
`pci_bus_id=` names the GPU directly; `index=` is NVML's own index (what `nvidia-smi` shows).

Tests inject `nvml=` an object with pynvml's function names (a synthetic fake answering from a
hand-written trace, not recorded from a GPU) and `cuda_lookup=` in place of asking CUDA.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from edgeattack.metrics.energy.base import Clock, Meter, MeterError, WindowData
from edgeattack.metrics.energy.gpu_map import (
    PciLookup,
    cuda_pci_bus_id,
    normalise_pci_bus_id,
    nvml_handle_for_cuda_device,
)
from edgeattack.metrics.energy.sampling import DEFAULT_INTERVAL_S, Sampler, counter_delta, integrate_power

__all__ = ["NvmlMeter"]

_MIB = 1024.0 * 1024.0


def _import_nvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:
        raise MeterError(f"pynvml cannot be imported ({exc}); pip install nvidia-ml-py") from exc
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlMeter(Meter):
    """A GPU through NVML: energy counter (or integrated power), device memory, clocks.

    The GPU is CUDA device `cuda_device` (default 0), mapped to NVML by PCI bus id / UUID; or the
    GPU at `pci_bus_id`; or NVML's own `index`. Give at most one of the three.
    """

    name = "nvml"

    def __init__(
        self,
        *,
        cuda_device: int | None = None,
        pci_bus_id: str | None = None,
        index: int | None = None,
        nvml: Any = None,
        cuda_lookup: PciLookup | None = cuda_pci_bus_id,
        environ: Mapping[str, str] | None = None,
        use_energy_counter: bool = True,
        interval_s: float | None = DEFAULT_INTERVAL_S,
        clock: Clock = time.perf_counter,
        idle_power_w: float | None = None,
        min_window_s: float | None = None,
    ) -> None:
        super().__init__(clock=clock, idle_power_w=idle_power_w, min_window_s=min_window_s)
        self.target = _Target.of(cuda_device, pci_bus_id, index, cuda_lookup, environ)
        self._nvml = nvml
        self.use_energy_counter = use_energy_counter
        self._handle: Any = None
        self._counter = False
        self._counter_note = ""
        self._device: dict[str, Any] = {}
        self._sampler = Sampler(self._read, interval_s=interval_s, clock=clock, what=f"NVML {self.target.label}")

    @classmethod
    def available(
        cls,
        *,
        cuda_device: int | None = None,
        pci_bus_id: str | None = None,
        index: int | None = None,
        nvml: Any = None,
        cuda_lookup: PciLookup | None = cuda_pci_bus_id,
        environ: Mapping[str, str] | None = None,
    ) -> tuple[bool, str]:
        try:
            target = _Target.of(cuda_device, pci_bus_id, index, cuda_lookup, environ)
        except MeterError as exc:
            return False, str(exc)
        try:
            lib = nvml if nvml is not None else _import_nvml()
        except MeterError as exc:
            return False, str(exc)
        try:
            lib.nvmlInit()
        except Exception as exc:
            return False, f"NVML cannot start ({exc}): no NVIDIA driver or GPU here"
        try:
            count = int(lib.nvmlDeviceGetCount())
            if target.index is not None and not 0 <= target.index < count:
                return False, f"NVML sees {count} GPU(s), no index {target.index}"
            try:
                handle, found = target.resolve(lib)
            except MeterError as exc:
                return False, str(exc)
            name = _text(lib.nvmlDeviceGetName(handle))
            try:
                lib.nvmlDeviceGetTotalEnergyConsumption(handle)
                how = "total-energy counter"
            except Exception:
                lib.nvmlDeviceGetPowerUsage(handle)
                how = "power sampling (no energy counter on this GPU)"
            return True, f"NVML {target.label} ({name}; {found['how']}): {how}"
        except Exception as exc:
            return False, f"NVML cannot read {target.label}: {exc}"
        finally:
            try:
                lib.nvmlShutdown()
            except Exception:
                pass

    @property
    def index(self) -> int | None:
        """NVML's index of the GPU, when it was given as such."""
        return self.target.index

    @property
    def sampler(self) -> Sampler:
        return self._sampler

    def _lib(self) -> Any:
        if self._nvml is None:
            self._nvml = _import_nvml()
        return self._nvml

    def _read(self) -> dict[str, float]:
        lib, handle = self._lib(), self._handle
        values = {
            "power_w": float(lib.nvmlDeviceGetPowerUsage(handle)) / 1000.0,
            "memory_used_mib": float(lib.nvmlDeviceGetMemoryInfo(handle).used) / _MIB,
        }
        if self._counter:
            values["energy_mj"] = float(lib.nvmlDeviceGetTotalEnergyConsumption(handle))
        return values

    def _clocks(self) -> dict[str, int | None]:
        lib, clocks = self._lib(), {}
        for key, attr in (("sm", "NVML_CLOCK_SM"), ("memory", "NVML_CLOCK_MEM")):
            try:
                clocks[key] = int(lib.nvmlDeviceGetClockInfo(self._handle, getattr(lib, attr)))
            except Exception:
                clocks[key] = None
        return clocks

    def _start_impl(self) -> None:
        lib = self._lib()
        lib.nvmlInit()
        self._handle, found = self.target.resolve(lib)
        memory = lib.nvmlDeviceGetMemoryInfo(self._handle)
        self._device = {
            **found,
            "name": _text(lib.nvmlDeviceGetName(self._handle)),
            "memory_total_mib": float(memory.total) / _MIB,
            "clocks_mhz_start": self._clocks(),
        }
        self._counter, self._counter_note = False, "energy counter not requested"
        if self.use_energy_counter:
            try:
                lib.nvmlDeviceGetTotalEnergyConsumption(self._handle)
                self._counter = True
            except Exception as exc:
                self._counter_note = f"no energy counter ({exc})"
        self._sampler.start()

    def _abort_impl(self) -> None:
        self._shutdown()

    def _shutdown(self) -> None:
        try:
            self._lib().nvmlShutdown()
        except Exception:
            pass

    def _stop_impl(self, window_s: float) -> WindowData:
        sampler = self._sampler
        sampler.stop()
        device = dict(self._device, clocks_mhz_end=self._clocks() if sampler.error is None else None)
        self._shutdown()
        if self._counter:
            method = "NVML nvmlDeviceGetTotalEnergyConsumption (mJ counter), difference over the window"
        else:
            method = (f"NVML nvmlDeviceGetPowerUsage sampled every {sampler.interval_s or 0:g} s, trapezoid "
                      f"({self._counter_note})")
        if sampler.error is not None:
            return WindowData(None, method, samples=len(sampler), reason=sampler.error, device=device)
        warnings = sampler.check()
        times = sampler.times
        power = sampler.values("power_w")
        if self._counter:
            counter = sampler.values("energy_mj")
            try:
                delta_mj, _ = counter_delta(counter, None)
            except MeterError as exc:
                return WindowData(None, method, samples=len(sampler), reason=f"NVML energy counter: {exc} "
                                  "(driver reloaded?)", device=device)
            energy = delta_mj / 1000.0
            if delta_mj == 0 and power.max(initial=0.0) > 0:
                warnings.append("the NVML energy counter did not advance over the window (it updates every 20-100 ms)")
        else:
            energy = integrate_power(times, power)
        memory = sampler.values("memory_used_mib")
        return WindowData(
            energy,
            method,
            domain_energy_j={self.target.domain: energy},
            energy_domains=(self.target.domain,),
            samples=len(sampler),
            sample_rate_hz=sampler.rate_hz(),
            warnings=warnings,
            peak_memory_mib=float(memory.max()),
            memory_delta_mib=float(memory.max() - memory[0]),
            memory_method="NVML device memory used (all processes on the GPU), peak of the samples",
            device=device,
        )


class _Target:
    """Which GPU an NvmlMeter reads: a CUDA ordinal (mapped), a PCI bus id, or an NVML index."""

    def __init__(
        self,
        cuda_device: int | None,
        pci_bus_id: str | None,
        index: int | None,
        cuda_lookup: PciLookup | None,
        environ: Mapping[str, str] | None,
    ) -> None:
        self.cuda_device, self.pci_bus_id, self.index = cuda_device, pci_bus_id, index
        self.cuda_lookup, self.environ = cuda_lookup, environ

    @classmethod
    def of(
        cls,
        cuda_device: int | None,
        pci_bus_id: str | None,
        index: int | None,
        cuda_lookup: PciLookup | None,
        environ: Mapping[str, str] | None,
    ) -> _Target:
        if index is not None and (cuda_device is not None or pci_bus_id is not None):
            raise MeterError("give the NVML meter an NVML index, or a CUDA device (and its PCI bus id), not both")
        if index is None and cuda_device is None and pci_bus_id is None:
            cuda_device = 0
        if pci_bus_id is not None:
            pci_bus_id = normalise_pci_bus_id(pci_bus_id)
        return cls(cuda_device, pci_bus_id, index, cuda_lookup, environ)

    @property
    def label(self) -> str:
        if self.index is not None:
            return f"GPU index {self.index}"
        if self.cuda_device is not None:
            return f"CUDA device {self.cuda_device}" + (f" ({self.pci_bus_id})" if self.pci_bus_id else "")
        return f"GPU {self.pci_bus_id}"

    @property
    def domain(self) -> str:
        """The energy domain's name: `gpuN` for CUDA device N, `nvmlN` for NVML index N, else the bus id."""
        if self.index is not None:
            return f"nvml{self.index}"
        return f"gpu{self.cuda_device}" if self.cuda_device is not None else f"gpu-{self.pci_bus_id}"

    def resolve(self, lib: Any) -> tuple[Any, dict[str, Any]]:
        """(handle, how it was found); MeterError when the GPU cannot be told."""
        if self.index is not None:
            return lib.nvmlDeviceGetHandleByIndex(self.index), {"nvml_index": self.index, "how": "NVML index"}
        if self.cuda_device is None:
            assert self.pci_bus_id is not None
            try:
                handle = lib.nvmlDeviceGetHandleByPciBusId(self.pci_bus_id)
            except Exception as exc:
                raise MeterError(f"NVML has no GPU at PCI bus id {self.pci_bus_id}: {exc}") from exc
            return handle, {"pci_bus_id": self.pci_bus_id, "how": "PCI bus id"}
        return nvml_handle_for_cuda_device(
            lib, self.cuda_device, pci_bus_id=self.pci_bus_id, environ=self.environ, cuda_lookup=self.cuda_lookup
        )
