"""Energy and memory meters behind one interface (DESIGN.md "Metric definitions"); numpy/stdlib only.

Real meters subtract an idle baseline: `NvmlMeter` (NVIDIA GPUs, pynvml imported on first use),
`JetsonMeter` (INA3221 rails from sysfs), `RaplMeter` (Intel/AMD RAPL powercap counters). The
`EstimateMeter` is a labelled model-based estimate, never presented as measured; `NoMeter` says why
nothing measures; `ProcessMemoryMeter` reports peak process memory under the same interface.

>>> meter = select_meter("auto", device=engine_device(engine).spec)   # "cpu", "cuda:N", "jetson"
>>> meter.measure_idle(1.0)
>>> reading = measure_energy(lambda: engine.run(batch), meter, inferences_per_call=len(batch))
>>> energy_summary(reading, gflops_per_inference=g)
"""

from __future__ import annotations

from edgeattack.metrics.energy.base import (
    ENERGY_DEFINITIONS,
    ESTIMATE,
    MEASURED,
    MEMORY,
    NONE,
    EnergyResult,
    Meter,
    MeterError,
    MeterPermissionError,
    MeterReading,
    WindowData,
)
from edgeattack.metrics.energy.device import EngineDevice, engine_device, resolve_device
from edgeattack.metrics.energy.estimate import (
    ENERGY_ESTIMATE_METHOD,
    PJ_PER_MAC,
    EstimateMeter,
    NoMeter,
    estimate_energy_j,
)
from edgeattack.metrics.energy.gpu_map import cuda_pci_bus_id, nvml_handle_for_cuda_device
from edgeattack.metrics.energy.jetson import BOARD_INPUT_RAILS, JetsonMeter, Rail, board_power_source, find_rails
from edgeattack.metrics.energy.measure import NO_METER_REASON, energy_summary, measure_energy
from edgeattack.metrics.energy.memory import ProcessMemoryMeter
from edgeattack.metrics.energy.nvml import NvmlMeter
from edgeattack.metrics.energy.rapl import RaplDomain, RaplMeter, find_rapl_domains
from edgeattack.metrics.energy.sampling import Sampler, counter_delta, integrate_power
from edgeattack.metrics.energy.select import METERS, available_meters, meter_names, parse_device, select_meter
from edgeattack.metrics.energy.tegrastats import parse_tegrastats_line

__all__ = [
    "BOARD_INPUT_RAILS",
    "ENERGY_DEFINITIONS",
    "ENERGY_ESTIMATE_METHOD",
    "ESTIMATE",
    "MEASURED",
    "MEMORY",
    "METERS",
    "NONE",
    "NO_METER_REASON",
    "PJ_PER_MAC",
    "EnergyResult",
    "EngineDevice",
    "EstimateMeter",
    "JetsonMeter",
    "Meter",
    "MeterError",
    "MeterPermissionError",
    "MeterReading",
    "NoMeter",
    "NvmlMeter",
    "ProcessMemoryMeter",
    "Rail",
    "RaplDomain",
    "RaplMeter",
    "Sampler",
    "WindowData",
    "available_meters",
    "board_power_source",
    "counter_delta",
    "cuda_pci_bus_id",
    "energy_summary",
    "engine_device",
    "estimate_energy_j",
    "find_rails",
    "find_rapl_domains",
    "integrate_power",
    "measure_energy",
    "meter_names",
    "nvml_handle_for_cuda_device",
    "parse_device",
    "parse_tegrastats_line",
    "resolve_device",
    "select_meter",
]
