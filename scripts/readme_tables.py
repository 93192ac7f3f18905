"""Write the README's demo tables and figures from a finished `edgeattack demo` store (never by hand).

Reads the store's report data (the same rows as `STORE/tables/*.json`) and replaces the block between
`<!-- BEGIN demo-tables -->` and `<!-- END demo-tables -->` in README.md with:

- the engines table: clean accuracy, size (MB = 10^6 B), GFLOPs and median latency of the original's
  four deployments and of every other family's fp32 engine;
- the transfer table: ASR of PGD at L∞ `--eps` crafted on each row's model (and on the original's
  int8 twin) replayed on each column's **fp32 ONNX engine** (the engine its caption names);
- the headline figures of the other sections (PGD at 8/255, UAPs, black-box, DeSparsify), each
  read from its own row.

Usage: python scripts/readme_tables.py STORE [--readme README.md] [--eps 2/255] [--command "..."]
"""

from __future__ import annotations

import argparse
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- BEGIN demo-tables -->", "<!-- END demo-tables -->"
ORIGINAL = "vit_tiny_digits"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * float(value):.1f}"


def _span(values: list[float]) -> str:
    low, high = _pct(min(values)), _pct(max(values))
    return low if low == high else f"{low}–{high}"


def _family_label(model: str, family: str | None) -> str:
    if model == ORIGINAL:
        return "original"
    suffix = re.search(r"_r(\d\d)$", model)
    return f"{family} r{suffix.group(1)}" if suffix else str(family)


def engines_table(data: Any) -> list[str]:
    rows = [r for r in data.engines if r["model"] == ORIGINAL or r["engine"].endswith("/fp32")]
    batch = {r.get("batch_size") for r in rows} - {None}
    shown_batch = f"batch {batch.pop()}" if len(batch) == 1 else "batch as in the report"
    lines = [
        f"| engine | family | clean_acc % | size MB | GFLOPs | median latency ms ({shown_batch}) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        gflops = "–" if r.get("gflops") is None else f"{r['gflops']:.3f}"
        size = "–" if r.get("size_mb") is None else f"{r['size_mb']:.2f}"
        latency = "–" if r.get("latency_median_ms") is None else f"{r['latency_median_ms']:.1f}"
        lines.append(f"| {r['engine']} | {r['family']} | {_pct(r['clean_acc'])} | {size} | {gflops} | {latency} |")
    return lines


def _families(data: Any) -> dict[str, str]:
    return {r["model"]: r["family"] for r in data.engines}


def transfer_table(data: Any, eps: float) -> list[str]:
    families = _families(data)
    models = list(dict.fromkeys(r["model"] for r in data.engines))
    pgd = [r for r in data.transfer if r["method"] == "pgd" and r["eps"] is not None and abs(r["eps"] - eps) < 1e-9]
    sources = list(dict.fromkeys(r["artifact"].split("@", 1)[1] for r in pgd))
    sources.sort(key=lambda s: (models.index(s.split("~")[0]) if s.split("~")[0] in models else 99, "~" in s))
    header = " | ".join(_family_label(m, families.get(m)) for m in models)
    lines = [f"| crafted on \\ replayed on (fp32 engine) | {header} |", "|---|" + "---:|" * len(models)]
    for source in sources:
        model, _, twin = source.partition("~")
        name = _family_label(model, families.get(model)) + (f"'s {twin} twin" if twin else "")
        cells = []
        for target in models:
            match = [r for r in pgd if r["artifact"].endswith(f"@{source}") and r["engine"] == f"{target}/fp32"]
            cells.append(_pct(match[0]["asr"]) if match else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def headline_figures(data: Any) -> list[str]:
    """The other sections' figures, each from its own row of the report data."""
    bullets = []
    strong = [r for r in data.transfer if r["method"] == "pgd" and abs(r["eps"] - 8 / 255) < 1e-9 and "~" not in r["artifact"]]
    own = [r["asr"] for r in strong if r["engine"] == f"{r['source']}/fp32" and r["asr"] is not None]
    other = [
        r["asr"] for r in strong
        if r["engine"].endswith("/fp32") and r["engine"] != f"{r['source']}/fp32" and r["asr"] is not None
    ]
    if own and other:
        bullets.append(
            f"PGD at 8/255 reaches {_span(own)} % ASR on its own model's fp32 engine and "
            f"{_span(other)} % on the other models' fp32 engines."
        )
    uaps = [r for r in data.transfer if r["method"].startswith("uap") and r["engine"].startswith(f"{ORIGINAL}/")]
    for source in dict.fromkeys(r["artifact"] for r in uaps):
        rates = ", ".join(
            f"{r['engine'].split('/', 1)[1]} {_pct(r['fooling_rate'])}" for r in uaps if r["artifact"] == source
        )
        bullets.append(f"UAP `{source}`: fooling rate % on the original's engines: {rates}.")
    for r in data.blackbox:
        q = "–" if r.get("queries_median") is None else f"{r['queries_median']:.0f}"
        bullets.append(
            f"Black-box `{r['attack']}` on {r['engine']} (budget {r['budget']}): {r['images_attacked']}/{r['images']} "
            f"images attacked, success within budget {_pct(r['success_within_budget'])} %, median {q} queries."
        )
    clean = {r["engine"]: r for r in data.availability if r["pass"] == "clean"}
    for r in data.availability:
        if r["pass"] == "clean" or r["engine"] not in clean:
            continue
        c = clean[r["engine"]]
        ratio = "–" if r.get("latency_ratio") is None else f"{r['latency_ratio']:.2f}"
        gratio = "–" if r.get("gflops_ratio") is None else f"{r['gflops_ratio']:.2f}"
        gap = "–" if r.get("tur_gap_closed") is None else f"{100 * r['tur_gap_closed']:.0f}"
        bullets.append(
            f"DeSparsify `{r['pass']}` on {r['engine']}: TUR {c['tur']:.3f} → {r['tur']:.3f} ({gap} % of the gap "
            f"closed), GFLOPs ×{gratio}, median batch-1 latency ×{ratio}, predictions kept {_pct(r['prediction_kept'])} %."
        )
    return [f"- {b}" for b in bullets]


def render(data: Any, eps: float, eps_text: str, command: str) -> str:
    meta = data.meta
    wall = meta.get("wall_s")
    lines = [
        BEGIN,
        f"<!-- written by `python scripts/readme_tables.py` from the store of `{command}`; do not edit by hand -->",
        "",
        f"Measured by `{command}` ({meta.get('planned')} cells"
        + (f", {wall / 60:.1f} min wall" if wall else "")
        + f", {meta.get('dataset')}:{meta.get('eval_split')}, seed {meta.get('seed')}):",
        "",
        *engines_table(data),
        "",
        f"Transfer at L∞ {eps_text}: `asr %` of PGD crafted on the row's model, replayed on the column's fp32 "
        "ONNX engine:",
        "",
        *transfer_table(data, eps),
        "",
        *headline_figures(data),
        "",
        END,
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store", type=Path)
    parser.add_argument("--readme", type=Path, default=Path(__file__).resolve().parents[1] / "README.md")
    parser.add_argument("--eps", default="2/255")
    parser.add_argument("--command", default="edgeattack demo", help="The command that made the store (quoted).")
    args = parser.parse_args()

    from edgeattack.experiments.report_data import report_data

    block = render(report_data(args.store), float(Fraction(args.eps)), args.eps, args.command)
    text = args.readme.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{args.readme} has no {BEGIN} ... {END} block to replace")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    args.readme.write_text(head + block + tail, encoding="utf-8")
    print(block)


if __name__ == "__main__":
    main()
