"""Parse one line of NVIDIA's `tegrastats` (every Jetson generation) into a dict; stdlib only.

The line's layout differs by module and JetPack release; every field is optional:

- `RAM 3645/7620MB (lfb 63x4MB)`, `SWAP 236/3810MB (cached 0MB)`, `IRAM 0/252kB(lfb 252kB)` (Nano/TX1);
- `CPU [1%@729,off,...]` (load % and MHz per core, "off" for a parked core), or the older
  `CPU [12%,8%]@1190` (one frequency after the list);
- `EMC_FREQ 1%@2133`, `GR3D_FREQ 14%@[407,407]` (Orin: one MHz per GPC), `GR3D_FREQ 0%@76` (Nano),
  `GR3D_FREQ 33%` (no frequency, recent JetPacks), `GR3D2_FREQ`; engines `APE 174`, `VIC_FREQ 115`,
  `NVDEC off`, `NVDLA0_FREQ @1600`; `MTS fg 0% bg 0%`;
- temperatures `name@44.125C` (`-256C` marks an absent sensor: dropped, listed in `offline_sensors`);
- power rails, instantaneous / running average: `VDD_IN 2957mW/2957mW` (JetPack 5/6), or without
  unit `POM_5V_IN 4520/4680`, `VDD_IN 14025/14416` (JetPack 4: Nano, TX2, Xavier; also mW).

`board_power_mw` is the module's total: VDD_IN or POM_5V_IN where printed, else the sum of every
rail (AGX Xavier, AGX Orin), as `board_power_source` says.
"""

from __future__ import annotations

import re
from typing import Any

from edgeattack.metrics.energy.jetson import board_power_source

__all__ = ["parse_tegrastats_line"]

_TIMESTAMP = re.compile(r"^\s*(\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2})\s")
_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB(?: \(lfb (\d+)x(\d+)(MB|kB)\))?")
_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB(?: \(cached (\d+)MB\))?")
_IRAM = re.compile(r"\bIRAM (\d+)/(\d+)kB(?:\s*\(lfb (\d+)kB\))?")
_CPU = re.compile(r"\bCPU \[([^\]]*)\](?:@(\d+))?")
_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
_GR3D = re.compile(r"\bGR3D(\d?)_FREQ (\d+)%(?:@\[?([\d,]+)\]?)?")
_ENGINE = re.compile(
    r"\b(APE|VIC|VIC_FREQ|NVENC\d?|NVDEC\d?|NVJPG\d?|OFA|MSENC|SE|NVDLA\d(?:_FREQ)?|PVA\d(?:_FREQ)?)"
    r" (off|@?\d+)(?![\w%/])"
)
_MTS = re.compile(r"\bMTS fg (\d+)% bg (\d+)%")
_TEMP = re.compile(r"(?<![\w@])([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_RAIL_MW = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)mW(?:/(\d+)mW)?")
_RAIL_BARE = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)/(\d+)(?![\w/.])")
_NOT_RAILS = {"RAM", "SWAP", "IRAM"}
_ABSENT_SENSOR_C = -256.0


def _int(text: str | None) -> int | None:
    return None if text is None or text == "" else int(text)


def _cpu(body: str, shared_freq: str | None) -> list[dict[str, int | None] | None]:
    cores: list[dict[str, int | None] | None] = []
    for item in (part.strip() for part in body.split(",")):
        if not item or item == "off":
            cores.append(None)
            continue
        load, _, freq = item.partition("@")
        cores.append({"load_pct": _int(load.rstrip("%")), "freq_mhz": _int(freq) if freq else _int(shared_freq)})
    return cores


def parse_tegrastats_line(line: str) -> dict[str, Any]:
    """The fields of one tegrastats line (absent fields are absent keys).

    tegrastats prints `MB` for 2**20 bytes, so those values are stored as `*_mib`.
    Keys: `timestamp`; `ram_used_mib`, `ram_total_mib`, `ram_lfb_blocks`, `ram_lfb_block_mib`;
    `swap_used_mib`, `swap_total_mib`, `swap_cached_mib`; `iram_used_kb`, `iram_total_kb`;
    `cpu` (per core {"load_pct", "freq_mhz"}, None when off), `cpu_load_pct` (mean of online cores),
    `cpu_online`; `emc_load_pct`, `emc_freq_mhz`; `gpu_load_pct` (GR3D_FREQ %), `gpu_freq_mhz`
    (list, one per GPC), `gpu2_*` for GR3D2; `engines_mhz` (None when off); `mts_fg_pct`,
    `mts_bg_pct`; `temperatures_c` (lower-case sensor names), `offline_sensors`; `rails`
    ({name: {"power_mw", "average_mw"}}), `rail_format` ("mW" or "bare"); `board_power_mw`,
    `board_power_source`.
    """
    out: dict[str, Any] = {}
    if m := _TIMESTAMP.match(line):
        out["timestamp"] = m.group(1)
    if m := _RAM.search(line):
        out["ram_used_mib"], out["ram_total_mib"] = int(m.group(1)), int(m.group(2))
        if m.group(3):
            out["ram_lfb_blocks"] = int(m.group(3))
            out["ram_lfb_block_mib"] = int(m.group(4)) / (1024.0 if m.group(5) == "kB" else 1.0)
    if m := _SWAP.search(line):
        out["swap_used_mib"], out["swap_total_mib"] = int(m.group(1)), int(m.group(2))
        if m.group(3):
            out["swap_cached_mib"] = int(m.group(3))
    if m := _IRAM.search(line):
        out["iram_used_kb"], out["iram_total_kb"] = int(m.group(1)), int(m.group(2))
    if m := _CPU.search(line):
        cores = _cpu(m.group(1), m.group(2))
        online = [c["load_pct"] for c in cores if c is not None and c["load_pct"] is not None]
        out["cpu"] = cores
        out["cpu_online"] = sum(c is not None for c in cores)
        out["cpu_load_pct"] = sum(online) / len(online) if online else None
    if m := _EMC.search(line):
        out["emc_load_pct"], out["emc_freq_mhz"] = int(m.group(1)), _int(m.group(2))
    for m in _GR3D.finditer(line):
        key = f"gpu{m.group(1)}"
        out[f"{key}_load_pct"] = int(m.group(2))
        if m.group(3):
            out[f"{key}_freq_mhz"] = [int(f) for f in m.group(3).split(",") if f]
    engines = {
        m.group(1).removesuffix("_FREQ"): (None if m.group(2) == "off" else int(m.group(2).lstrip("@")))
        for m in _ENGINE.finditer(line)
    }
    if engines:
        out["engines_mhz"] = engines
    if m := _MTS.search(line):
        out["mts_fg_pct"], out["mts_bg_pct"] = int(m.group(1)), int(m.group(2))
    temps: dict[str, float] = {}
    offline: list[str] = []
    for m in _TEMP.finditer(line):
        value = float(m.group(2))
        if value <= _ABSENT_SENSOR_C:
            offline.append(m.group(1).lower())
        else:
            temps[m.group(1).lower()] = value
    if temps:
        out["temperatures_c"] = temps
    if offline:
        out["offline_sensors"] = offline
    _rails(line, out)
    return out


def _rails(line: str, out: dict[str, Any]) -> None:
    rails: dict[str, dict[str, int | None]] = {}
    formats = set()
    for m in _RAIL_MW.finditer(line):
        rails[m.group(1)] = {"power_mw": int(m.group(2)), "average_mw": _int(m.group(3))}
        formats.add("mW")
    for m in _RAIL_BARE.finditer(line):
        if m.group(1) not in _NOT_RAILS:
            rails[m.group(1)] = {"power_mw": int(m.group(2)), "average_mw": int(m.group(3))}
            formats.add("bare")
    if not rails:
        return
    out["rails"] = rails
    out["rail_format"] = "+".join(sorted(formats))
    total, how = board_power_source(list(rails))
    out["board_power_mw"] = sum(rails[name]["power_mw"] or 0 for name in total)
    out["board_power_source"] = how
