"""DeSparsify on the embedded token-sparse zoo, measured on deployed ONNX Runtime engines.

For every mechanism (ATS, A-ViT, AdaViT on the digits ViT): the DeSparsify variants (single-image,
ensemble over the three mechanisms, class-universal, universal, universal patch) are crafted in
PyTorch — per-image ones on the test images, universal ones on the validation split — and replayed
on the mechanism's ONNX engine (physical token dropping, `token_counts` output) with
`edgeattack.availability`: accuracy, prediction kept, TUR, GFLOPs, batch-1 latency (passes
interleaved), energy estimate, ratios and the TUR gap closed. Then the transfer of single-image
perturbations between mechanisms, and the token-cap defence (cap = the 0.95 quantile of clean
per-block counts on the validation split) against the same perturbations and against DeSparsify
re-run on the capped model (an adaptive attacker).

Usage: python benchmarks/bench_desparsify.py [--images 270] [--latency-images 64] [--out /tmp/bench_desparsify]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

MECHANISMS = ("ats_tiny_digits", "avit_tiny_digits", "adavit_tiny_digits")
VARIANTS = ("single", "class-universal", "universal", "patch")


def fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def availability_table(title: str, result) -> list[str]:
    lines = [
        f"**{title}** (batch-1 latency over {result.settings['latency_images']} images × "
        f"{result.settings['latency_rounds']} rounds)",
        "",
        "| perturbation | accuracy | prediction kept | TUR | TUR gap closed | GFLOPs | × GFLOPs | "
        "latency median ms | × latency (median) | × latency (mean) | energy mJ (estimate) | peak RSS Δ MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in result.passes:
        mem = None if p.memory is None else p.memory.peak_rss_delta_mib
        lines.append(
            f"| {p.label} | {fmt(p.accuracy)} | {fmt(p.prediction_kept)} | {fmt(p.tur)} | "
            f"{fmt(p.gap_closed.get('tur'))} | {fmt(p.gflops, 4)} | {fmt(p.ratios.get('gflops'), 2)} | "
            f"{fmt(None if p.latency is None else p.latency.median_ms, 3)} | "
            f"{fmt(p.ratios.get('latency_median'), 2)} | {fmt(p.ratios.get('latency_mean'), 2)} | "
            f"{fmt(p.energy.get('estimate_mj'), 4)} | {fmt(mem, 1)} |"
        )
    return [*lines, ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=270)
    parser.add_argument("--latency-images", type=int, default=64)
    parser.add_argument("--latency-rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench_desparsify"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from edgeattack.attacks.whitebox import make_attack
    from edgeattack.availability import evaluate_availability
    from edgeattack.data import load_digits_dataset
    from edgeattack.engines import open_engine
    from edgeattack.export.onnx_export import export_onnx
    from edgeattack.sparsity.defence import token_cap_from_clean, with_token_cap
    from edgeattack.zoo import create_model

    torch.set_num_threads(1)
    test = load_digits_dataset("test").take(args.images)
    val = load_digits_dataset("val")
    models = {name: create_model(name) for name in MECHANISMS}
    engines, capped_engines, caps, artifacts, timings = {}, {}, {}, {}, {}
    for name, model in models.items():
        engines[name] = args.out / f"{name}.onnx"
        export_onnx(model, engines[name])
        caps[name] = token_cap_from_clean(model, val, quantile=0.95)
        capped = with_token_cap(model, caps[name])
        capped_engines[name] = args.out / f"{name}_capped.onnx"
        export_onnx(capped, capped_engines[name])
        artifacts[name] = {}
        for variant in VARIANTS:
            fit = test if variant == "single" else val
            t0 = time.perf_counter()
            output = make_attack("desparsify", variant=variant)(model, fit)
            timings[(name, variant)] = time.perf_counter() - t0
            artifacts[name][variant] = output.to_artifact()
        t0 = time.perf_counter()
        artifacts[name]["adaptive"] = make_attack("desparsify", variant="single")(capped, test).to_artifact()
        timings[(name, "adaptive")] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ensemble = make_attack("desparsify", variant="ensemble")(list(models.values()), test).to_artifact()
    timings[("all", "ensemble")] = time.perf_counter() - t0

    lines = [
        f"{len(test)} digits test images (universal variants fitted on the {len(val)} validation images); "
        "ONNX Runtime CPU, 1 thread; default DeSparsify hyper-parameters (eps 8/255 except the patch).",
        "",
    ]
    transfer = {}
    for name in MECHANISMS:
        passes = [artifacts[name][v] for v in VARIANTS] + [ensemble]
        with open_engine(engines[name], intra_op_threads=1) as engine:
            result = evaluate_availability(
                engine, test, passes, latency_images=args.latency_images, latency_rounds=args.latency_rounds
            )
        result = _relabel(result, ["clean", *VARIANTS, "ensemble (ATS+A-ViT+AdaViT)"])
        lines += availability_table(f"{name}", result)
        result.save(args.out / f"availability-{name}.json")
        others = [artifacts[s]["single"] for s in MECHANISMS if s != name]
        with open_engine(engines[name], intra_op_threads=1) as engine:
            replay = evaluate_availability(engine, test, others, latency_images=0)
        transfer[name] = dict(zip([s for s in MECHANISMS if s != name], replay.passes[1:], strict=True))
        transfer[name][name] = result.passes[1]
    lines += [
        "**Transfer of single-image DeSparsify between mechanisms** (TUR gap closed on the target "
        "engine; prediction kept in brackets)",
        "",
        "| crafted on \\ replayed on | " + " | ".join(MECHANISMS) + " |",
        "|---|" + "---|" * len(MECHANISMS),
    ]
    for source in MECHANISMS:
        cells = [
            f"{fmt(transfer[t][source].gap_closed.get('tur'), 2)} ({fmt(transfer[t][source].prediction_kept, 2)})"
            for t in MECHANISMS
        ]
        lines.append(f"| {source} | " + " | ".join(cells) + " |")
    lines += ["", "**Token-cap defence** (cap per block = 0.95 quantile of clean counts on the validation split)", "",
              "| mechanism | cap per block | engine | clean accuracy | clean TUR | TUR under single-image DeSparsify | "
              "× latency (median) | TUR under adaptive DeSparsify (crafted on the capped model) | prediction kept (adaptive) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for name in MECHANISMS:
        for label, path in (("uncapped", engines[name]), ("capped", capped_engines[name])):
            with open_engine(path, intra_op_threads=1) as engine:
                result = evaluate_availability(
                    engine, test, [artifacts[name]["single"], artifacts[name]["adaptive"]],
                    latency_images=args.latency_images, latency_rounds=args.latency_rounds,
                )
            clean, single, adaptive = result.passes
            lines.append(
                f"| {name} | {list(caps[name]) if label == 'capped' else '-'} | {label} | {fmt(clean.accuracy)} | "
                f"{fmt(clean.tur)} | {fmt(single.tur)} | {fmt(single.ratios.get('latency_median'), 2)} | "
                f"{fmt(adaptive.tur)} | {fmt(adaptive.prediction_kept)} |"
            )
    lines += ["", "Crafting time (PyTorch, 1 thread): " + ", ".join(
        f"{n.split('_')[0]} {v} {t:.0f} s" for (n, v), t in timings.items())]
    print("\n".join(lines))


def _relabel(result, labels):
    import dataclasses

    passes = tuple(dataclasses.replace(p, label=label) for p, label in zip(result.passes, labels, strict=True))
    return dataclasses.replace(result, passes=passes)


if __name__ == "__main__":
    main()
