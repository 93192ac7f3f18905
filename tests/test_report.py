"""The experiment report (edgeattack.report): HTML, Markdown, figures, table exports, the torch line."""

from __future__ import annotations

import base64
import csv
import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from test_torch_line import make_blocker_dir, run_python_without_torch

from edgeattack.errors import ConfigError
from edgeattack.report import ReportData, ReportFiles, render_html, render_markdown, write_report, write_tables
from edgeattack.report.data import SECTIONS, compact_floats, eps_label, perturbation_label
from edgeattack.report.figures import FIGURES, accuracy_vs_size, asr_vs_eps, render_figures, transfer_heatmap
from edgeattack.report.tables import FOLD_ROWS, MAX_EPS_PANELS, asr_eps_panels, block_note, table_rows

EVIL = "<script>alert('x')</script>"
DATA_URI = re.compile(r"data:image/png;base64,([A-Za-z0-9+/=]+)")


def synthetic_report() -> ReportData:
    """A realistic small experiment: three engines (vit, int8, ats), transfer, black-box, DeSparsify."""
    rng = np.random.default_rng(0)
    engines = [
        {
            "engine": "deit_tiny/fp32",
            "model": "deit_tiny",
            "family": "vit",
            "precision": "fp32",
            "backend": "onnxruntime",
            "size_mb": 21.93,
            "params_m": 5.72,
            "gflops": 1.258,
            "clean_acc": 0.912,
            "n_images": 200,
            "latency_median_ms": 4.2137,
            "latency_p90_ms": 4.871,
            "throughput_ips": 237.46,
            "batch_size": 8,
            "providers": "CPUExecutionProvider",
        },
        {
            "engine": "deit_tiny/int8",
            "model": "deit_tiny",
            "family": "int8",
            "precision": "int8",
            "backend": "onnxruntime",
            "size_mb": 5.81,
            "params_m": 5.72,
            "gflops": 1.258,
            "clean_acc": 0.8975,
            "n_images": 200,
            "latency_median_ms": 2.9051,
            "latency_p90_ms": 3.3012,
            "throughput_ips": 344.2,
            "batch_size": 8,
            "providers": "CPUExecutionProvider",
        },
        {
            "engine": "ats_deit_tiny/fp32",
            "model": "ats_deit_tiny",
            "family": "ats",
            "precision": "fp32",
            "backend": "onnxruntime",
            "size_mb": 21.95,
            "params_m": 5.72,
            "gflops": 0.884,
            "clean_acc": 0.905,
            "n_images": 200,
            "latency_median_ms": None,
            "latency_p90_ms": None,
            "throughput_ips": None,
            "batch_size": 8,
            "providers": "CPUExecutionProvider",
        },
    ]
    names = [e["engine"] for e in engines]
    transfer = []
    base = {"deit_tiny/fp32": 0.95, "deit_tiny/int8": 0.71, "ats_deit_tiny/fp32": 0.43}
    for eps in (2, 4, 8):
        for engine in names:
            asr = round(base[engine] * eps / 8, 4)
            transfer.append(
                {
                    "artifact": f"pgd-linf-{eps}",
                    "method": "pgd",
                    "norm": "linf",
                    "eps": eps / 255,
                    "source": "deit_tiny",
                    "engine": engine,
                    "asr": asr,
                    "adv_acc": round(1 - asr, 4),
                    "fooling_rate": round(asr * 0.97, 4),
                    "images": 200,
                }
            )
    for engine, asr in zip(names, (0.634, 0.552, None), strict=True):
        transfer.append(
            {
                "artifact": "uap-linf-8",
                "method": "uap",
                "norm": "linf",
                "eps": 8 / 255,
                "source": "deit_tiny",
                "engine": engine,
                "asr": asr,
                "adv_acc": None if asr is None else round(1 - asr, 4),
                "fooling_rate": None,
                "images": 200,
            }
        )
    blackbox = [
        {
            "engine": "deit_tiny/int8",
            "attack": "square:eps=0.03",
            "method": "square",
            "norm": "linf",
            "eps": 8 / 255,
            "budget": 1000,
            "asr": 0.8125,
            "success_within_budget": 0.8125,
            "queries_median": 143.0,
            "queries_mean": 212.4,
            "l2_median": 1.9342,
            "linf_median": 8 / 255,
            "curve": [[0, 0.0], [10, 0.05], [50, 0.31], [100, 0.48], [200, 0.66], [500, 0.77], [1000, 0.8125]],
        },
        {
            "engine": "ats_deit_tiny/fp32",
            "attack": "hopskipjump",
            "method": "hopskipjump",
            "norm": "l2",
            "eps": None,
            "budget": 1000,
            "asr": 1.0,
            "success_within_budget": 0.6,
            "queries_median": 420.0,
            "queries_mean": None,
            "l2_median": 3.21,
            "linf_median": None,
            "curve": [[0, 0.0], [25, 0.2], [100, 0.35], [400, 0.5], [1000, 0.6]],
        },
    ]
    availability = []
    passes = [
        ("clean", None, None, 0.905, 1.0, 0.52, 3.0),
        ("desparsify-ats-8", "desparsify", 8 / 255, 0.88, 0.93, 0.81, 4.6),
        ("desparsify-ats-16", "desparsify", 16 / 255, 0.85, 0.9, 0.94, 5.3),
    ]
    for label, method, eps, acc, kept, tur, latency in passes:
        clean = label == "clean"
        availability.append(
            {
                "engine": "ats_deit_tiny/fp32",
                "model": "ats_deit_tiny",
                "mechanism": "ats",
                "pass": label,
                "method": method,
                "variant": None if clean else "single",
                "eps": eps,
                "accuracy": acc,
                "prediction_kept": kept,
                "tur": tur,
                "tur_per_block": [1.0, tur, tur * 0.9, tur * 0.8],
                "gflops": round(0.884 * (1 + (tur - 0.52)), 3),
                "latency_median_ms": latency,
                "latency_ratio": None if clean else round(latency / 3.0, 3),
                "gflops_ratio": None if clean else round(1 + (tur - 0.52), 3),
                "tur_gap_closed": None if clean else round((tur - 0.52) / 0.48, 3),
                "energy_measured_j_per_image": None,
                "energy_meter": None,
                "energy_not_measured_reason": "no energy meter works for device 'cpu' here",
                "energy_estimate_j_per_image": None if clean else 0.0123,
                "energy_estimate_method": None if clean else "estimate, not a measurement: MACs x 4.6 pJ",
                "latency_samples_ms": [round(float(v), 3) for v in rng.normal(latency, latency * 0.08, 40)],
            }
        )
    token_depth = []
    yy, xx = np.mgrid[0:8, 0:8]
    centre = np.exp(-((yy - 3.5) ** 2 + (xx - 3.5) ** 2) / 12.0)
    for label, lift in (("clean", 0.0), ("desparsify-ats-8", 2.0), ("desparsify-ats-16", 3.5)):
        grid = np.clip(1.0 + 4.0 * centre + lift * (1 - centre), 0, 6)
        token_depth.append(
            {
                "model": "ats_deit_tiny",
                "pass": label,
                "depth": 6,
                "images": 64,
                "grid": [[round(float(v), 3) for v in line] for line in grid],
            }
        )
    failures = [
        {
            "cell": f"blackbox/deit_tiny/{EVIL}",
            "kind": "blackbox",
            "status": "failed",
            "error": "EngineError: the engine returned NaN logits\n  at batch 3",
        }
    ]
    return ReportData(
        title="edgeattack experiment: synthetic",
        meta={
            "experiment": "synthetic",
            "config_sha256": "ab" * 32,
            "store": "/tmp/store",
            "created": "2025-01-01T00:00:00Z",
            "cells": {"done": 14, "failed": 1, "skipped": 0},
            "wall_s": 754.2,
            "seed": None,
        },
        engines=engines,
        transfer=transfer,
        blackbox=blackbox,
        availability=availability,
        token_depth=token_depth,
        failures=failures,
    )


@pytest.fixture(scope="module")
def data() -> ReportData:
    return synthetic_report()


@pytest.fixture(scope="module")
def images(data) -> dict[str, bytes | None]:
    return render_figures(data)


@pytest.fixture(scope="module")
def html(data, images) -> str:
    return render_html(data, images=images)


def _decoded_pngs(text: str) -> list[Image.Image]:
    result = []
    for payload in DATA_URI.findall(text):
        image = Image.open(io.BytesIO(base64.b64decode(payload)))
        image.load()
        result.append(image)
    return result


def test_every_figure_renders_a_sane_png(images):
    assert set(images) == set(FIGURES)
    for name, png in images.items():
        assert png is not None, name
        image = Image.open(io.BytesIO(png))
        assert image.format == "PNG"
        width, height = image.size
        assert 300 <= width <= 2000 and 200 <= height <= 2600, (name, image.size)


def test_html_has_every_section_figure_and_number(html, data):
    for section in SECTIONS:
        assert f'id="{section.anchor}"' in html and f'href="#{section.anchor}"' in html
    pngs = _decoded_pngs(html)
    assert len(pngs) == len(FIGURES)
    assert all(p.format == "PNG" and p.size[0] > 300 for p in pngs)
    for name in FIGURES:
        assert f'id="fig-{name}"' in html
    for number in (
        "91.2",
        "89.8",
        "4.21",
        "4.87",
        "237.5",
        "21.93",
        "1.26",
        "8/255",
        "2/255",
        "95.0",
        "63.4",
        "81.2",
        "143.0",
        "52.0",
        "1.53×",
        "12.3",
        "754.2 s",
        "done 14 · failed 1",
    ):
        assert number in html, number
    assert "No data" not in html
    assert "No figure" not in html


def test_html_is_self_contained(html):
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', html, re.IGNORECASE)
    assert "http://" not in html and "https://" not in html
    assert "<link" not in html and "<script" not in html.lower().replace("&lt;script", "")


def test_html_escapes_text(html):
    assert EVIL not in html
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in html
    assert 'class="failures alert"' in html and "1 cell did not finish" in html


def test_missing_values_render_as_dash(html, data):
    headers, rows = table_rows(data, "engines")
    ats = rows[2]
    assert ats[headers.index("Latency median (ms)")] == "–"
    assert '<td class="missing">–</td>' in html
    _, matrix = table_rows(data, "transfer_matrix")
    assert matrix[-1][-1] == "–"


def test_table_rows_format_units(data):
    headers, rows = table_rows(data, "transfer")
    assert headers[:4] == ["Artifact", "Method", "Norm", "ε"] and "ASR (%)" in headers
    assert rows[0][3] == "2/255"
    headers, rows = table_rows(data, "transfer_matrix")
    assert headers[1:] == ["deit_tiny/fp32", "deit_tiny/int8", "ats_deit_tiny/fp32"]
    assert [r[0] for r in rows] == [
        "pgd 2/255 @deit_tiny",
        "pgd 4/255 @deit_tiny",
        "pgd 8/255 @deit_tiny",
        "uap 8/255 @deit_tiny",
    ]
    assert rows[2][1] == "95.0"
    headers, rows = table_rows(data, "latency_distribution")
    assert [r[1] for r in rows] == ["clean", "desparsify-ats-8", "desparsify-ats-16"]
    assert all(r[2] == "40" for r in rows)
    headers, rows = table_rows(data, "token_depth")
    assert rows[0][headers.index("Grid (tokens)")] == "8×8"
    assert eps_label(0.5, "l2") == "0.5" and eps_label(None) == "–" and eps_label(1 / 255) == "1/255"
    assert perturbation_label({"method": "pgd"}) == "pgd"
    assert perturbation_label({"method": "cw", "norm": "l2", "eps": 0.5, "source": "twin"}) == "cw L2 0.5 @twin"


def test_empty_tables_say_no_data():
    data = ReportData(title="only engines", engines=synthetic_report().engines[:1])
    html = render_html(data)
    empty = sum(1 for section in SECTIONS if section.source not in ("engines", "failures"))
    assert empty == 6  # transfer matrix, ASR vs eps, AutoAttack, black-box, availability, token depth
    assert html.count("No data: the store holds no finished cell of this kind") == empty
    assert "No failed, skipped or interrupted cell." in html
    assert 'class="failures alert"' not in html
    assert len(_decoded_pngs(html)) == 1
    markdown = render_markdown(data)
    assert markdown.count("No data: the store holds no finished cell of this kind") == empty


def test_partial_data_without_figures_data_says_why():
    full = synthetic_report()
    transfer = [dict(r) for r in full.transfer if r["method"] == "uap"]
    availability = [{**r, "latency_samples_ms": None} for r in full.availability]
    data = ReportData(
        title="partial", transfer=transfer, availability=availability, blackbox=[{**full.blackbox[0], "curve": []}]
    )
    html = render_html(data)
    assert "No figure: no method was replayed at two or more ε values" in html
    assert "No figure: no pass recorded its latency samples." in html
    assert "No figure: no black-box attack recorded a query-success curve." in html
    assert "No engine has a clean accuracy" not in html


def test_all_none_values_do_not_crash():
    keys = {name: list(rows[0]) for name, rows in synthetic_report().to_dict().items() if isinstance(rows, list)}
    data = ReportData(
        title="nothing measured",
        meta={"cells": None},
        **{name: [dict.fromkeys(k) for _ in range(2)] for name, k in keys.items()},
    )
    html = render_html(data)
    assert "–" in html
    render_markdown(data)


def test_empty_data_raises(tmp_path):
    data = ReportData(title="empty", meta={"experiment": "x"})
    assert data.is_empty()
    with pytest.raises(ConfigError, match="nothing to report"):
        write_report(data, tmp_path / "report.html")
    assert not (tmp_path / "report.html").exists()


def test_markdown_has_tables_and_embedded_images(data, images):
    markdown = render_markdown(data, images=images)
    assert markdown.startswith("# edgeattack experiment: synthetic\n")
    assert "| Engine | Model | Family |" in markdown
    assert "| --- | --- | --- | --- | --- | ---: |" in markdown  # numbers right-aligned
    assert len(_decoded_pngs(markdown)) == len(FIGURES)
    assert "](#asr-vs-ε)" in markdown and "](#availability-desparsify)" in markdown
    assert EVIL not in markdown and "&lt;script&gt;" in markdown
    assert "<br>" in markdown  # the failure's two-line error stays in one table row
    assert "Warning: 1 cell did not finish" in markdown


def test_markdown_image_dir_writes_files(data, images, tmp_path):
    image_dir = tmp_path / "figures"
    markdown = render_markdown(data, image_dir=image_dir, images=images)
    written = sorted(p.name for p in image_dir.iterdir())
    assert written == sorted(f"{name}.png" for name in FIGURES)
    assert "data:image" not in markdown
    for name in FIGURES:
        assert f"](figures/{name}.png)" in markdown
        assert Image.open(image_dir / f"{name}.png").format == "PNG"


def test_write_tables_round_trip(data, tmp_path):
    paths = write_tables(data, tmp_path / "tables")
    assert sorted(p.name for p in paths) == sorted(f"{t}.{ext}" for t in data.TABLES for ext in ("csv", "json"))
    for name in data.TABLES:
        rows = data.table(name)
        assert json.loads((tmp_path / "tables" / f"{name}.json").read_text()) == rows
        with open(tmp_path / "tables" / f"{name}.csv", newline="", encoding="utf-8") as handle:
            table = list(csv.reader(handle))
        assert table[0] == list(rows[0]) and len(table) == len(rows) + 1
    with open(tmp_path / "tables" / "blackbox.csv", newline="", encoding="utf-8") as handle:
        first = next(csv.DictReader(handle))
    assert json.loads(first["curve"]) == data.blackbox[0]["curve"]
    assert first["engine"] == "deit_tiny/int8"
    partial = write_tables(ReportData(title="t", engines=data.engines), tmp_path / "partial")
    assert sorted(p.name for p in partial) == ["engines.csv", "engines.json"]


def test_report_data_round_trip(data):
    doc = json.loads(json.dumps(data.to_dict()))
    assert ReportData.from_dict(doc) == data
    assert ReportData.from_dict({"title": "t"}).is_empty()
    with pytest.raises(ConfigError):
        ReportData.from_dict({"title": "t", "engines": "nope"})
    with pytest.raises(ConfigError):
        ReportData.from_dict({"engines": []})


def test_write_report_writes_everything(data, tmp_path):
    files = write_report(
        data,
        tmp_path / "out" / "report.html",
        markdown_path=tmp_path / "out" / "report.md",
        tables_dir=tmp_path / "out" / "tables",
    )
    assert isinstance(files, ReportFiles)
    assert files.html.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert files.markdown is not None and "](report_figures/transfer_heatmap.png)" in files.markdown.read_text()
    assert len(files.images) == len(FIGURES) and all(p.exists() for p in files.images)
    assert len(files.tables) == 2 * len(data.TABLES)


def test_report_imports_and_renders_without_torch(tmp_path):
    blocker = make_blocker_dir(tmp_path / "blocked")
    code = """
        import sys
        import edgeattack.report
        assert "matplotlib" not in sys.modules, "importing the report imported matplotlib"
        from edgeattack.report import ReportData, render_html
        data = ReportData(title="t", engines=[{"engine": "e", "family": "vit", "size_mb": 1.0, "gflops": 2.0,
                                                "clean_acc": 0.5}])
        html = render_html(data)
        assert "data:image/png;base64," in html
        loaded = sorted(m for m in ("torch", "timm", "onnx", "torchvision") if m in sys.modules)
        assert not loaded, loaded
        print("ok")
    """
    assert run_python_without_torch(code, blocker, cwd=tmp_path).stdout.strip() == "ok"


MODELS = ("vit_a", "deit_b", "dynamicvit_c", "minivit_d", "ats_e")
DEPLOYMENTS = ("torch", "fp32", "int8", "int8-dyn")


def many_engines_report(sources: int = 10) -> ReportData:
    """20 engines (5 models × 4 deployments) and `sources` pgd sources: the first 8 at 3 ε, the rest at 2."""
    engines = [
        {
            "engine": f"{model}/{deployment}",
            "model": model,
            "family": model.split("_")[0],
            "size_mb": 1.0 + index + (0.25 if deployment.startswith("int8") else 0.0),
            "gflops": 0.05,
            "clean_acc": 0.9,
        }
        for index, model in enumerate(MODELS)
        for deployment in DEPLOYMENTS
    ]
    transfer = []
    for n in range(sources):
        source = f"{MODELS[n % len(MODELS)]}~{n}" if n >= len(MODELS) else MODELS[n]
        for eps in (2, 4, 8) if n < MAX_EPS_PANELS else (4, 8):
            for engine in engines:
                asr = min(1.0, eps / 8 * (0.9 if engine["model"] == source.split("~")[0] else 0.3))
                transfer.append(
                    {
                        "method": "pgd",
                        "norm": "linf",
                        "eps": eps / 255,
                        "source": source,
                        "engine": engine["engine"],
                        "asr": asr,
                    }
                )
    return ReportData(title="many engines", engines=engines, transfer=transfer)


def test_asr_vs_eps_table_is_the_figures_pivot(data):
    headers, rows = table_rows(data, "asr_vs_eps")
    assert headers == ["Method", "Crafted on", "Target model", "Kind", "Engines", "ε = 2/255", "ε = 4/255", "ε = 8/255"]
    assert [r[:5] for r in rows] == [
        ["pgd", "deit_tiny", "deit_tiny", "white-box", "2"],
        ["pgd", "deit_tiny", "ats_deit_tiny", "transfer", "1"],
    ]  # uap has one ε only: no line
    assert rows[0][5:] == ["20.8", "41.5", "83.0"]  # mean of fp32 (95 % at 8/255) and int8 (71 %)
    assert rows[1][6:] == ["21.5", "43.0"]
    (panel,) = asr_eps_panels(data)
    white_box = panel.curves[0]
    assert white_box.white_box and white_box.points[8 / 255] == pytest.approx((0.83, 0.71, 0.95))
    assert block_note(data, "asr_vs_eps") == ""


def test_asr_vs_eps_keeps_the_panels_with_most_eps():
    data = many_engines_report(sources=10)
    panels = asr_eps_panels(data)
    assert len(panels) == 10 and [len(p.eps) for p in panels] == [3] * 8 + [2] * 2
    assert all(len(p.curves) == len(MODELS) and p.curves[0].white_box for p in panels)
    assert sum(c.white_box for p in panels for c in p.curves) == 10  # `model~twin` counts as crafted on model
    assert block_note(data, "asr_vs_eps").startswith("2 of 10 method/source panels are left out")
    _, rows = table_rows(data, "asr_vs_eps")
    assert len(rows) == 10 * len(MODELS)  # the table keeps every panel
    assert rows[-1][5] == "–" and rows[-1][4] == "4"
    html = render_html(data)
    assert "2 of 10 method/source panels are left out" in html
    png = asr_vs_eps(data)
    assert png is not None
    width, height = Image.open(io.BytesIO(png)).size
    assert width <= 1400 and height <= 900  # 2 rows of 4 panels, not 10 panels or 200 lines


def test_wide_figures_stay_readable():
    data = many_engines_report(sources=3)
    for render in (transfer_heatmap, accuracy_vs_size):
        png = render(data)
        assert png is not None
        width, _ = Image.open(io.BytesIO(png)).size
        assert width <= 1300, render.__name__


def test_long_transfer_table_is_folded(tmp_path):
    data = many_engines_report(sources=1)
    assert len(data.transfer) == 60 > FOLD_ROWS
    html = render_html(data)
    assert '<details class="fold"><summary>All 60 replayed perturbations' in html
    assert html.count("<details") == 1  # the pivot and the matrix stay open
    files = write_report(data, tmp_path / "r.html", markdown_path=tmp_path / "r.md", tables_dir=tmp_path / "tables")
    assert files.markdown is not None
    markdown = files.markdown.read_text(encoding="utf-8")
    assert "Showing the first 40 of 60 rows; all 60 are in [tables/transfer.csv](tables/transfer.csv)" in markdown
    section = markdown.split("**Every replayed perturbation")[1].split("Showing the first")[0]
    assert sum(line.startswith("| ") for line in section.splitlines()) == FOLD_ROWS + 2  # head and rule
    with open(tmp_path / "tables" / "transfer.csv", encoding="utf-8") as handle:
        assert len(handle.read().splitlines()) == 61  # the CSV holds every row
    short = render_html(synthetic_report())
    assert "<details" not in short and "Every replayed perturbation" in short


def test_long_floats_in_labels_are_compact(data):
    assert compact_floats("square:eps=0.03137254901960784") == "square:eps=8/255"
    assert compact_floats("lr=0.123456789, eps=0.5, r07") == "lr=0.1235, eps=0.5, r07"
    assert compact_floats("v1.2.12345678") == "v1.2.12345678"
    blackbox = [{**data.blackbox[0], "attack": "square:eps=0.03137254901960784"}]
    headers, rows = table_rows(ReportData(title="t", blackbox=blackbox), "blackbox")
    assert rows[0][headers.index("Attack")] == "square:eps=8/255"
    html = render_html(ReportData(title="t", blackbox=blackbox))
    assert "0.0313725" not in html and "square:eps=8/255" in html


def test_wide_tables_get_the_compact_style(html):
    availability = html.split('id="availability"')[1].split("</section>")[0]
    assert '<table class="wide">' in availability
    engines = html.split('id="engines"')[1].split("</section>")[0]
    assert '<table class="wide">' in engines
    matrix = html.split('id="transfer-matrix"')[1].split("</section>")[0]
    assert "<table>" in matrix and "deit_<wbr>tiny/<wbr>int8</th>" in matrix  # long headers may wrap


def test_autoattack_table_pairs_reference_and_twin_per_engine():
    from edgeattack.report.robustness import autoattack_rows

    def row(engine: str, source: str, adv_acc: float, flipped: int) -> dict:
        breakdown = {
            "images": 10,
            "rows": [
                {"name": "clean", "source": 1, "engine_broken": 1},
                {"name": "apgd-ce", "source": 5, "engine_broken": 4},
                {"name": "square", "source": 1, "engine_broken": 1},
                {"name": "robust", "source": 3, "engine_broken": flipped},
            ],
            "robust_source_broken_engine": flipped,
            "broken_source_robust_engine": 1,
        }
        return {"method": "autoattack", "norm": "linf", "eps": 4 / 255, "engine": engine, "source": source,
                "adv_acc": adv_acc, "images": 10, "breakdown": breakdown}

    transfer = [
        row("m/int8", "m", 0.4, 1),
        row("m/int8", "m~int8", 0.2, 0),
        row("m/fp32", "m", 0.3, 0),
        row("other/fp32", "m", 0.9, 0),  # cross-model: left to the transfer table
        {"method": "pgd", "engine": "m/fp32", "source": "m", "eps": 4 / 255, "norm": "linf"},
    ]
    headers, rows = autoattack_rows(ReportData(title="aa", transfer=transfer))
    assert [r[0] for r in rows] == ["m/fp32", "m/int8"]
    fp32, int8 = (dict(zip(headers, r, strict=True)) for r in rows)
    assert int8["ε"] == "4/255" and int8["Twin of"] == "int8"
    assert int8["Robust acc. crafted on reference (%)"] == "40.0" and int8["Robust acc. crafted on twin (%)"] == "20.0"
    assert int8["Misclassified here / broken on source, per attack (reference)"] == "apgd-ce 4/5 · square 1/1"
    assert int8["Robust on source, broken here (reference)"] == "1"
    assert fp32["Robust acc. crafted on twin (%)"] == "–" and fp32["Twin of"] == "–"
    assert autoattack_rows(ReportData(title="none", transfer=transfer[-1:]))[1] == []
