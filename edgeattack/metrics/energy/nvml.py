"""NVIDIA GPUs through NVML (the `nvidia-ml-py` package, module `pynvml`, imported on first use).

Energy: `nvmlDeviceGetTotalEnergyConsumption` (mJ since the driver loaded; Volta and newer) read at
the start and the end of the window; where it is not supported, `nvmlDeviceGetPowerUsage` (mW)
sampled by a thread (default 20 Hz) and integrated (trapezoid). Both update only every 20-100 ms
(and on Ampere and newer the power reading is a 1-s average), so windows shorter than
`min_window_s` (1 s) carry a warning: repeat the workload with `measure_energy`. The counter
running backwards (a driver reload) or NVML raising mid-window gives no energy, with the reason.

Also sampled: device memory in use (`nvmlDeviceGetMemoryInfo`: the peak and its rise over the
window, all processes on the GPU) and the SM / memory clocks at start and end.

Tests inject `nvml=` an object with the same function names (a recorded fake module).
"""

from __future__ import annotations

import time
from typing import Any

from edgeattack.metrics.energy.base import Clock, Meter, MeterError, WindowData
from edgeattack.metrics.energy.sampling import DEFAULT_INTERVAL_S, Sampler, counter_delta, integrate_power

__all__ = ["NvmlMeter"]

_MB = 1024.0 * 1024.0


def _import_nvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:
        raise MeterError(f"pynvml cannot be imported ({exc}); pip install nvidia-ml-py") from exc
    return pynvml


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlMeter(Meter):
    """GPU `index` through NVML: energy counter (or integrated power), device memory, clocks."""

    name = "nvml"

    def __init__(
        self,
        *,
        index: int = 0,
        nvml: Any = None,
        use_energy_counter: bool = True,
        interval_s: float | None = DEFAULT_INTERVAL_S,
        clock: Clock = time.perf_counter,
        idle_power_w: float | None = None,
        min_window_s: float | None = None,
    ) -> None:
        super().__init__(clock=clock, idle_power_w=idle_power_w, min_window_s=min_window_s)
        self.index = int(index)
        self._nvml = nvml
        self.use_energy_counter = use_energy_counter
        self._handle: Any = None
        self._counter = False
        self._counter_note = ""
        self._device: dict[str, Any] = {}
        self._sampler = Sampler(self._read, interval_s=interval_s, clock=clock, what=f"NVML GPU {self.index}")

    @classmethod
    def available(cls, *, index: int = 0, nvml: Any = None) -> tuple[bool, str]:
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
            if not 0 <= index < count:
                return False, f"NVML sees {count} GPU(s), no index {index}"
            handle = lib.nvmlDeviceGetHandleByIndex(index)
            name = _text(lib.nvmlDeviceGetName(handle))
            try:
                lib.nvmlDeviceGetTotalEnergyConsumption(handle)
                how = "total-energy counter"
            except Exception:
                lib.nvmlDeviceGetPowerUsage(handle)
                how = "power sampling (no energy counter on this GPU)"
            return True, f"NVML GPU {index} ({name}): {how}"
        except Exception as exc:
            return False, f"NVML cannot read GPU {index}: {exc}"
        finally:
            try:
                lib.nvmlShutdown()
            except Exception:
                pass

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
            "memory_used_mb": float(lib.nvmlDeviceGetMemoryInfo(handle).used) / _MB,
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
        self._handle = lib.nvmlDeviceGetHandleByIndex(self.index)
        memory = lib.nvmlDeviceGetMemoryInfo(self._handle)
        self._device = {
            "index": self.index,
            "name": _text(lib.nvmlDeviceGetName(self._handle)),
            "memory_total_mb": float(memory.total) / _MB,
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
        memory = sampler.values("memory_used_mb")
        return WindowData(
            energy,
            method,
            domain_energy_j={f"gpu{self.index}": energy},
            energy_domains=(f"gpu{self.index}",),
            samples=len(sampler),
            sample_rate_hz=sampler.rate_hz(),
            warnings=warnings,
            peak_memory_mb=float(memory.max()),
            memory_delta_mb=float(memory.max() - memory[0]),
            memory_method="NVML device memory used (all processes on the GPU), peak of the samples",
            device=device,
        )
