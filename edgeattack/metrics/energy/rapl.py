"""Intel (and AMD Zen) RAPL energy counters through the Linux powercap sysfs; stdlib + numpy.

Domains live under `root`/sys/class/powercap: `intel-rapl:N` (name `package-N`, or `psys` for the
platform) and subdomains `intel-rapl:N:M` (`core`, `uncore`, `dram`). Each has `energy_uj`, a
counter in microjoules that wraps at `max_energy_range_uj`. A thread reads the counters every
`interval_s` (default 0.05 s), so every wrap-around is seen and corrected, however long the window.

`energy_j` is the sum of the package domains (plus `dram` with `include_dram=True`: on servers DRAM
is outside the package). Every domain's own energy is in `domain_energy_j`. Since Linux 5.10
(CVE-2020-8694) `energy_uj` is readable by root only: then the meter is unavailable, with that reason.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from edgeattack.metrics.energy.base import Clock, Meter, MeterError, MeterPermissionError, WindowData
from edgeattack.metrics.energy.sampling import DEFAULT_INTERVAL_S, Sampler, counter_delta, read_number

__all__ = ["RaplDomain", "RaplMeter", "find_rapl_domains"]

_POWERCAP = "sys/class/powercap"
_PERMISSION_HINT = (
    "energy_uj is readable by root only since Linux 5.10 (CVE-2020-8694): run as root, or "
    "`sudo chmod a+r /sys/class/powercap/intel-rapl:*/energy_uj` (and intel-rapl:*:*)"
)


@dataclass(frozen=True)
class RaplDomain:
    """One powercap domain: its unique key (e.g. `package-0`, `package-0/dram`) and files."""

    key: str
    name: str
    path: Path
    top_level: bool

    def read_uj(self) -> float:
        return read_number(self.path / "energy_uj")

    def max_range_uj(self) -> float:
        return read_number(self.path / "max_energy_range_uj")


def find_rapl_domains(root: str | Path = "/") -> list[RaplDomain]:
    """The RAPL domains under `root` (empty where there is no powercap RAPL)."""
    base = Path(root) / _POWERCAP
    domains: list[RaplDomain] = []
    parents: dict[str, str] = {}
    for folder in sorted(base.glob("intel-rapl:*"), key=lambda p: [int(x) for x in p.name.split(":")[1:]]):
        try:
            name = (folder / "name").read_text().strip()
        except OSError:
            continue
        parts = folder.name.split(":")[1:]
        top = len(parts) == 1
        key = name if top else f"{parents.get(parts[0], 'intel-rapl:' + parts[0])}/{name}"
        if top:
            parents[parts[0]] = name
        domains.append(RaplDomain(key, name, folder, top))
    return domains


class RaplMeter(Meter):
    """RAPL package energy (optionally + DRAM) from powercap counters, wrap-around handled."""

    name = "rapl"
    default_min_window_s = 1.0

    def __init__(
        self,
        *,
        root: str | Path = "/",
        include_dram: bool = False,
        interval_s: float | None = DEFAULT_INTERVAL_S,
        clock: Clock = time.perf_counter,
        idle_power_w: float | None = None,
        min_window_s: float | None = None,
    ) -> None:
        super().__init__(clock=clock, idle_power_w=idle_power_w, min_window_s=min_window_s)
        self.root = Path(root)
        self.include_dram = include_dram
        self._domains: list[RaplDomain] = []
        self._ranges: dict[str, float] = {}
        self._sampler = Sampler(self._read, interval_s=interval_s, clock=clock, what="RAPL counters")

    @classmethod
    def available(cls, *, root: str | Path = "/") -> tuple[bool, str]:
        try:
            domains = cls._usable(find_rapl_domains(root), root)
        except MeterError as exc:
            return False, str(exc)
        return True, "RAPL domains " + ", ".join(d.key for d in domains)

    @staticmethod
    def _usable(domains: list[RaplDomain], root: str | Path) -> list[RaplDomain]:
        if not any(d.name.startswith("package") for d in domains):
            raise MeterError(f"no RAPL package domain under {Path(root) / _POWERCAP}/intel-rapl:* "
                             "(not an x86 Linux machine with the RAPL driver, or /sys/class/powercap not mounted)")
        for domain in domains:
            try:
                domain.read_uj()
                domain.max_range_uj()
            except MeterPermissionError as exc:
                raise MeterPermissionError(f"{exc}: {_PERMISSION_HINT}") from exc
        return domains

    @property
    def sampler(self) -> Sampler:
        return self._sampler

    def _read(self) -> dict[str, float]:
        return {d.key: d.read_uj() for d in self._domains}

    def _start_impl(self) -> None:
        self._domains = self._usable(find_rapl_domains(self.root), self.root)
        self._ranges = {d.key: d.max_range_uj() for d in self._domains}
        self._sampler.start()

    def _stop_impl(self, window_s: float) -> WindowData:
        sampler = self._sampler
        sampler.stop()
        method = f"RAPL powercap energy_uj counters read every {sampler.interval_s or 0:g} s, wrap-around corrected"
        device = {"domains": {d.key: str(d.path) for d in self._domains}}
        if sampler.error is not None:
            return WindowData(None, method, samples=len(sampler), reason=sampler.error, device=device)
        warnings = sampler.check()
        energies: dict[str, float | None] = {}
        for domain in self._domains:
            delta_uj, wraps = counter_delta(sampler.values(domain.key), self._ranges[domain.key])
            energies[domain.key] = delta_uj / 1e6
            if wraps:
                warnings.append(f"RAPL {domain.key} wrapped around {wraps} time(s); corrected with max_energy_range_uj")
        total = [d.key for d in self._domains if d.top_level and d.name.startswith("package")]
        if self.include_dram:
            total += [d.key for d in self._domains if d.name == "dram"]
        return WindowData(
            sum(energies[k] or 0.0 for k in total),
            method,
            domain_energy_j=energies,
            energy_domains=tuple(total),
            samples=len(sampler),
            sample_rate_hz=sampler.rate_hz(),
            warnings=warnings,
            device=device,
        )
