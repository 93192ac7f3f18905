"""`parse_tegrastats_line` on lines of several Jetson generations.

The lines are tegrastats output as published by Jetson users (project READMEs, test fixtures and
code comments found through public code search, 2019-2026; the Nano line is the one in
rbonghi/jetson_stats `tests/tegrastats`), copied unchanged except where a comment says otherwise.
No board was available to capture them here. Field meanings: NVIDIA's "Reported Statistics" page
of the tegrastats utility (RAM X/Y (lfb NxZ), CPU [X%@Z,...], GR3D_FREQ X%@[Y,...], rails
current/average).
"""

from __future__ import annotations

import json

import pytest

from edgeattack.metrics.energy import parse_tegrastats_line

# Jetson Nano, JetPack 4 (L4T 32): POM_5V_* rails without a unit, IRAM, GR3D_FREQ 0%@76 (no brackets).
NANO = (
    "RAM 1180/3965MB (lfb 1x2MB) SWAP 149/1024MB (cached 7MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [30%@1036,33%@1036,28%@1036,26%@1036] EMC_FREQ 10%@1600 GR3D_FREQ 0%@76 NVENC 716 NVDEC 716 APE 25 "
    "PLL@57C CPU@60.5C PMIC@100C GPU@59C AO@65C thermal@59.75C POM_5V_IN 4520/4680 POM_5V_GPU 0/0 POM_5V_CPU 1078/1205"
)
# Jetson Nano with two cores parked (one line; the source wrapped it).
NANO_OFF_CORES = (
    "RAM 1409/3964MB (lfb 28x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
    "CPU [22%@518,67%@518,off,off] EMC_FREQ 0%@1600 GR3D_FREQ 0%@76 APE 25 "
    "PLL@28.5C CPU@32C PMIC@50C GPU@30.5C AO@39.5C thermal@31.25C POM_5V_IN 2003/2003 POM_5V_GPU 0/0 POM_5V_CPU 320/320"
)
# Jetson TX2, L4T 28 (no SWAP field, MTS, VDD_SYS_* rails without a unit; VDD_IN listed in the middle).
TX2 = (
    "RAM 1004/7852MB (lfb 7x2MB) CPU [0%@350,4%@345,2%@499,1%@341,1%@349,0%@345] EMC_FREQ 17%@40 GR3D_FREQ 0%@114 "
    "APE 150 MTS fg 0% bg 0% PLL@34C MCPU@34C PMIC@100C Tboard@28C GPU@32C BCPU@34C thermal@33.2C Tdiode@30.5C "
    "VDD_SYS_GPU 153/153 VDD_SYS_SOC 383/383 VDD_4V0_WIFI 0/0 VDD_IN 1876/1876 VDD_SYS_CPU 229/229 VDD_SYS_DDR 134/134"
)
# Jetson TX2, L4T 32 (SWAP present, two Denver cores off).
TX2_OFF_CORES = (
    "RAM 2344/7852MB (lfb 1154x4MB) SWAP 0/3926MB (cached 0MB) CPU [1%@345,off,off,1%@345,0%@345,2%@345] "
    "EMC_FREQ 4%@1600 GR3D_FREQ 0%@624 APE 150 PLL@37.5C MCPU@37.5C PMIC@100C Tboard@32C GPU@35C BCPU@37.5C "
    "thermal@36.5C Tdiode@34.25C VDD_SYS_GPU 152/152 VDD_SYS_SOC 687/687 VDD_4V0_WIFI 0/0 VDD_IN 3056/3056 "
    "VDD_SYS_CPU 152/152 VDD_SYS_DDR 883/883"
)
# Jetson Xavier NX, JetPack 5: rails in mW, GR3D frequency in brackets (one line; the source wrapped it).
XAVIER_NX = (
    "RAM 2690/6854MB (lfb 6x1MB) SWAP 479/3427MB (cached 3MB) CPU [3%@1904,7%@1906,1%@1905,0%@1907,off,off] "
    "EMC_FREQ 0%@1600 GR3D_FREQ 0%@[510] VIC_FREQ 601 APE 150 AUX@39C CPU@39.5C AO@37.5C GPU@37.5C PMIC@50C "
    "VDD_IN 5079mW/5079mW VDD_CPU_GPU_CV 696mW/696mW VDD_SOC 1104mW/1104mW"
)
# Jetson AGX Xavier, JetPack 5: rails named GPU, CPU, SOC, CV, VDDRQ, SYS5V and no input rail.
# The source quoted the line from its CPU list on; "CPU " before the list is restored, RAM/SWAP are absent.
AGX_XAVIER = (
    "CPU [0%@1190,1%@1190,0%@1190,0%@1189,0%@1190,0%@1191,0%@1190,0%@1190] EMC_FREQ 0%@1331 GR3D_FREQ 0%@114 "
    "VIC_FREQ 115 APE 150 AUX@36C CPU@36.5C thermal@35.7C Tboard@37C AO@35C GPU@35C Tdiode@38.75C PMIC@50C "
    "GPU 467mW/467mW CPU 467mW/467mW SOC 1245mW/1245mW CV 0mW/0mW VDDRQ 311mW/311mW SYS5V 2768mW/2768mW"
)
# Jetson AGX Orin 64 GB, JetPack 6, DLA busy: timestamp, 12 cores, two GPCs, VDD_GPU_SOC/VDD_CPU_CV/VIN_SYS_5V0.
AGX_ORIN = (
    "11-21-2025 08:49:48 RAM 13983/62780MB (lfb 424x4MB) SWAP 126/31390MB (cached 0MB) "
    "CPU [90%@2201,100%@2201,100%@2201,100%@2201,100%@2201,100%@2201,100%@2201,100%@2201,100%@2201,100%@2201,"
    "100%@2201,100%@2201] EMC_FREQ 1%@2133 GR3D_FREQ 14%@[407,407] VIC_FREQ 115 NVDLA0_FREQ @1600 APE 174 "
    "CV0@73.625C CPU@77.281C Tboard@62C SOC2@70C Tdiode@62.25C SOC0@69.531C CV1@72.5C GPU@69.125C tj@77.281C "
    "SOC1@68.968C CV2@67.25C VDD_GPU_SOC 3150mW/2971mW VDD_CPU_CV 14312mW/12415mW VIN_SYS_5V0 4968mW/5048mW "
    "VDDQ_VDD2_1V8AO 1091mW/1091mW"
)
# Jetson Orin Nano, JetPack 6: engines "off", lower-case sensor names, VDD_IN / VDD_CPU_GPU_CV / VDD_SOC.
ORIN_NANO = (
    "09-21-2025 15:38:17 RAM 3645/7620MB (lfb 63x4MB) SWAP 236/3810MB (cached 0MB) "
    "CPU [1%@729,1%@729,4%@729,1%@729,0%@729,0%@729] EMC_FREQ 0%@204 GR3D_FREQ 0%@[305] "
    "NVDEC off NVJPG off NVJPG1 off VIC off OFA off APE 200 cpu@44.125C soc2@43.375C soc0@42.125C gpu@44.531C "
    "tj@44.531C soc1@43.156C VDD_IN 2957mW/2957mW VDD_CPU_GPU_CV 486mW/486mW VDD_SOC 1012mW/1012mW"
)
# Jetson Orin Nano Super, JetPack 6.2 after jetson_clocks: no EMC field, GR3D_FREQ without a frequency.
ORIN_NANO_SUPER = (
    "04-27-2026 15:00:54 RAM 779/7620MB (lfb 2x4MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [0%@1344,0%@1344,0%@1344,0%@1344,0%@1344,0%@1344] GR3D_FREQ 0% cpu@50.125C soc2@49.125C soc0@49.25C "
    "gpu@50.562C tj@50.562C soc1@50.437C VDD_IN 6626mW/6625mW VDD_CPU_GPU_CV 1228mW/1230mW VDD_SOC 2380mW/2380mW"
)
# Jetson Orin (8 GB, JetPack 5): two cores off, GR3D and GR3D2 frequencies without brackets.
ORIN_JP5 = (
    "01-24-2024 09:17:09 RAM 3503/7337MB (lfb 7x1MB) SWAP 430/3668MB (cached 1MB) "
    "CPU [11%@729,13%@729,9%@729,18%@729,off,off] EMC_FREQ 0%@2133 GR3D_FREQ 0%@305 GR3D2_FREQ 0%@0 "
    "VIC_FREQ 115 APE 174 CV0@42.718C CPU@44.093C SOC2@42.625C SOC0@43.281C CV1@42.25C GPU@41.343C tj@46.968C "
    "SOC1@46.968C CV2@42.875C VDD_IN 4915mW/4915mW VDD_CPU_GPU_CV 449mW/449mW VDD_SOC 1431mW/1431mW"
)

ALL_LINES = [NANO, NANO_OFF_CORES, TX2, TX2_OFF_CORES, XAVIER_NX, AGX_XAVIER, AGX_ORIN, ORIN_NANO, ORIN_NANO_SUPER,
             ORIN_JP5]


def test_nano_bare_rails_iram_and_engines():
    p = parse_tegrastats_line(NANO)
    assert (p["ram_used_mib"], p["ram_total_mib"], p["ram_lfb_blocks"], p["ram_lfb_block_mib"]) == (1180, 3965, 1, 2)
    assert (p["swap_used_mib"], p["swap_total_mib"], p["swap_cached_mib"]) == (149, 1024, 7)
    assert (p["iram_used_kb"], p["iram_total_kb"]) == (0, 252)
    assert p["cpu"] == [{"load_pct": x, "freq_mhz": 1036} for x in (30, 33, 28, 26)]
    assert p["cpu_load_pct"] == pytest.approx(29.25)
    assert (p["emc_load_pct"], p["emc_freq_mhz"]) == (10, 1600)
    assert (p["gpu_load_pct"], p["gpu_freq_mhz"]) == (0, [76])
    assert p["engines_mhz"] == {"NVENC": 716, "NVDEC": 716, "APE": 25}
    assert p["temperatures_c"] == {"pll": 57.0, "cpu": 60.5, "pmic": 100.0, "gpu": 59.0, "ao": 65.0, "thermal": 59.75}
    assert p["rail_format"] == "bare"
    assert p["rails"] == {
        "POM_5V_IN": {"power_mw": 4520, "average_mw": 4680},
        "POM_5V_GPU": {"power_mw": 0, "average_mw": 0},
        "POM_5V_CPU": {"power_mw": 1078, "average_mw": 1205},
    }
    # POM_5V_IN is the module's input: the CPU and GPU rails are part of it, not added to it.
    assert p["board_power_mw"] == 4520
    assert p["board_power_source"].startswith("POM_5V_IN")


def test_parked_cores_are_none_and_excluded_from_the_mean():
    p = parse_tegrastats_line(NANO_OFF_CORES)
    assert p["cpu"] == [{"load_pct": 22, "freq_mhz": 518}, {"load_pct": 67, "freq_mhz": 518}, None, None]
    assert p["cpu_online"] == 2
    assert p["cpu_load_pct"] == pytest.approx(44.5)
    q = parse_tegrastats_line(TX2_OFF_CORES)
    assert q["cpu"][1] is None and q["cpu"][2] is None and q["cpu_online"] == 4


def test_tx2_vdd_in_is_the_total_wherever_it_appears():
    p = parse_tegrastats_line(TX2)
    assert "swap_used_mib" not in p  # L4T 28 printed no SWAP field
    assert (p["mts_fg_pct"], p["mts_bg_pct"]) == (0, 0)
    assert set(p["rails"]) == {"VDD_SYS_GPU", "VDD_SYS_SOC", "VDD_4V0_WIFI", "VDD_IN", "VDD_SYS_CPU", "VDD_SYS_DDR"}
    assert p["board_power_mw"] == 1876
    assert p["temperatures_c"]["bcpu"] == 34.0 and p["temperatures_c"]["tdiode"] == 30.5
    assert parse_tegrastats_line(TX2_OFF_CORES)["board_power_mw"] == 3056


def test_xavier_nx_mw_rails_and_bracketed_gpu_frequency():
    p = parse_tegrastats_line(XAVIER_NX)
    assert p["rail_format"] == "mW"
    assert p["rails"]["VDD_CPU_GPU_CV"] == {"power_mw": 696, "average_mw": 696}
    assert p["board_power_mw"] == 5079
    assert p["gpu_freq_mhz"] == [510]
    assert p["engines_mhz"] == {"VIC": 601, "APE": 150}


def test_agx_xavier_rails_named_like_the_cpu_field_and_summed():
    p = parse_tegrastats_line(AGX_XAVIER)
    assert len(p["cpu"]) == 8 and p["cpu"][0] == {"load_pct": 0, "freq_mhz": 1190}
    assert p["rails"]["CPU"] == {"power_mw": 467, "average_mw": 467}
    assert p["rails"]["GPU"]["power_mw"] == 467 and p["rails"]["SYS5V"]["power_mw"] == 2768
    # No input rail on AGX Xavier: the module's power is the sum of its rails.
    assert p["board_power_mw"] == 467 + 467 + 1245 + 0 + 311 + 2768
    assert p["board_power_source"].startswith("sum of all rails")
    assert p["temperatures_c"]["cpu"] == 36.5 and "ram_used_mib" not in p


def test_agx_orin_two_gpcs_dla_and_rails():
    p = parse_tegrastats_line(AGX_ORIN)
    assert p["timestamp"] == "11-21-2025 08:49:48"
    assert (p["ram_used_mib"], p["ram_total_mib"]) == (13983, 62780)
    assert len(p["cpu"]) == 12 and p["cpu_load_pct"] == pytest.approx((90 + 11 * 100) / 12)
    assert (p["gpu_load_pct"], p["gpu_freq_mhz"]) == (14, [407, 407])
    assert p["engines_mhz"] == {"VIC": 115, "NVDLA0": 1600, "APE": 174}
    assert p["temperatures_c"]["tj"] == 77.281 and p["temperatures_c"]["cv2"] == 67.25
    assert p["rails"]["VDD_CPU_CV"] == {"power_mw": 14312, "average_mw": 12415}
    assert p["board_power_mw"] == 3150 + 14312 + 4968 + 1091


def test_orin_nano_jetpack6():
    p = parse_tegrastats_line(ORIN_NANO)
    assert p["timestamp"] == "09-21-2025 15:38:17"
    assert p["engines_mhz"] == {"NVDEC": None, "NVJPG": None, "NVJPG1": None, "VIC": None, "OFA": None, "APE": 200}
    assert p["temperatures_c"] == {"cpu": 44.125, "soc2": 43.375, "soc0": 42.125, "gpu": 44.531, "tj": 44.531,
                                   "soc1": 43.156}
    assert p["gpu_freq_mhz"] == [305] and p["emc_freq_mhz"] == 204
    assert p["board_power_mw"] == 2957 and p["rails"]["VDD_SOC"]["power_mw"] == 1012


def test_orin_nano_super_without_emc_or_gpu_frequency():
    p = parse_tegrastats_line(ORIN_NANO_SUPER)
    assert "emc_load_pct" not in p and "gpu_freq_mhz" not in p
    assert p["gpu_load_pct"] == 0
    assert p["rails"]["VDD_IN"] == {"power_mw": 6626, "average_mw": 6625}
    assert p["board_power_mw"] == 6626


def test_orin_jetpack5_second_gpc_field():
    p = parse_tegrastats_line(ORIN_JP5)
    assert (p["gpu_load_pct"], p["gpu_freq_mhz"]) == (0, [305])
    assert (p["gpu2_load_pct"], p["gpu2_freq_mhz"]) == (0, [0])
    assert p["cpu_online"] == 4 and p["board_power_mw"] == 4915


def test_absent_sensor_sentinel_is_dropped():
    # The AGX Orin line with its CV sensors reported absent (-256C), as boards without them print.
    line = AGX_ORIN.replace("CV0@73.625C", "CV0@-256C").replace("CV1@72.5C", "CV1@-256C")
    p = parse_tegrastats_line(line)
    assert "cv0" not in p["temperatures_c"] and p["offline_sensors"] == ["cv0", "cv1"]


def test_synthetic_variants_from_the_documented_formats():
    # NVIDIA documents the older "CPU [X%,Y%]@Z" form (one frequency for the cluster); a kB lfb;
    # rails printed with mW but no running average.
    p = parse_tegrastats_line("RAM 4722/7844MB (lfb 1x512kB) CPU [12%,8%,off]@1190 VDD_IN 6848mW VDD_SOC 2637mW")
    assert p["ram_lfb_block_mib"] == 0.5
    assert p["cpu"] == [{"load_pct": 12, "freq_mhz": 1190}, {"load_pct": 8, "freq_mhz": 1190}, None]
    assert p["rails"]["VDD_IN"] == {"power_mw": 6848, "average_mw": None}
    assert p["board_power_mw"] == 6848


@pytest.mark.parametrize("line", ALL_LINES)
def test_every_line_parses_to_json_with_memory_cpu_and_power(line):
    p = parse_tegrastats_line(line)
    assert "cpu" in p and p["rails"] and p["board_power_mw"] > 0
    assert "RAM" not in p["rails"] and "SWAP" not in p["rails"] and "IRAM" not in p["rails"]
    json.dumps(p, allow_nan=False)


@pytest.mark.parametrize("line", ["", "garbage", "RAM 900/3956MB", "CPU@41.5C GPU@40C tj@41.5C"])
def test_partial_lines_degrade_without_raising(line):
    p = parse_tegrastats_line(line)
    assert "rails" not in p and "board_power_mw" not in p
