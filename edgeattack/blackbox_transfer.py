"""Black-box attacks on several engines and their transfer both ways, in one call. No torch.

The paper attacks its int8 model only through black-box attacks and replays what it finds on the
fp32 model, and the other way round. `blackbox_transfer(engines, dataset, specs)` does exactly that
for any set of deployed engines: it evaluates each engine under every attack spec (queries counted,
budget enforced), then replays each engine's adversarial examples on every other engine. The
`TransferMatrix` holds, per attack, the asr on each target engine (rows: the engine the examples
were found on; the diagonal is the attack's own asr), with each target's own denominator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgeattack import __version__
from edgeattack._io import atomic_write_json, no_overwrite_path
from edgeattack.attacks.blackbox.registry import BlackBoxSpec, parse_spec
from edgeattack.attacks.blackbox.runner import DEFAULT_BUDGET, BlackBoxRun
from edgeattack.data.base import ImageDataset
from edgeattack.engines import Engine, open_engine
from edgeattack.errors import ConfigError
from edgeattack.evaluate import evaluate
from edgeattack.results import EvaluationResult

__all__ = ["BlackBoxTransfer", "TransferMatrix", "blackbox_transfer"]

TRANSFER_KIND = "blackbox-transfer"


@dataclass(frozen=True)
class TransferMatrix:
    """asr[source][target] of one attack; `source` found the examples, `target` replayed them."""

    attack: str
    engines: list[str]
    asr: list[list[float | None]]
    adv_acc: list[list[float | None]]

    def to_dict(self) -> dict[str, Any]:
        return {"attack": self.attack, "engines": self.engines, "asr": self.asr, "adv_acc": self.adv_acc}


@dataclass(frozen=True)
class BlackBoxTransfer:
    """Per-engine results (attacks + replays of the other engines' examples) and the matrices."""

    results: list[EvaluationResult]
    matrices: list[TransferMatrix]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": TRANSFER_KIND,
            "schema_version": 1,
            "edgeattack_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "settings": self.settings,
            "definitions": {
                "asr": "as in DESIGN.md, over the images the target engine classifies correctly when clean",
                "diagonal": "the attack's own result on the engine it queried",
                "off_diagonal": "the source engine's adversarial examples replayed on the target engine",
            },
            "matrices": [m.to_dict() for m in self.matrices],
            "results": [r.to_dict() for r in self.results],
        }

    def save(self, path: str | Path) -> Path:
        target = no_overwrite_path(path)
        return atomic_write_json(target, self.to_dict())


def _open(engine: Engine | str | Path, providers: Sequence[str] | None, threads: int | None) -> Engine:
    if isinstance(engine, Engine):
        return engine
    return open_engine(engine, providers=providers, intra_op_threads=threads)


def blackbox_transfer(
    engines: Sequence[Engine | str | Path],
    dataset: ImageDataset,
    specs: Sequence[BlackBoxSpec | str],
    *,
    budget: int | None = DEFAULT_BUDGET,
    quantize_inputs: bool = False,
    seed: int = 0,
    artifact_dir: str | Path | None = None,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    measure_latency: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> BlackBoxTransfer:
    """Attack each engine with each spec, then replay every engine's examples on every other one.

    `progress(stage, total, advance)` follows each evaluation (stage names the engine and pass).
    """
    if len(engines) < 2:
        raise ConfigError("transfer needs at least two engines (e.g. the int8 and the fp32 engine)")
    if not specs:
        raise ConfigError("transfer needs at least one black-box attack spec")
    parsed = [parse_spec(s) if isinstance(s, str) else s for s in specs]
    opened = [_open(e, providers, threads) for e in engines]
    names = [e.name for e in opened]
    if len(set(names)) != len(names):
        names = [f"{i}:{n}" for i, n in enumerate(names)]
    found: list[list[BlackBoxRun]] = []
    attack_results: list[EvaluationResult] = []
    for name, engine in zip(names, opened, strict=True):
        runs: list[BlackBoxRun] = []
        with engine:
            attack_results.append(
                evaluate(
                    engine,
                    dataset,
                    blackbox=parsed,
                    budget=budget,
                    quantize_inputs=quantize_inputs,
                    seed=seed,
                    blackbox_dir=artifact_dir,
                    runs=runs,
                    measure_latency=measure_latency,
                    progress=None if progress is None else _stage(progress, f"attacking {name}"),
                )
            )
        found.append(runs)
    replays: list[EvaluationResult] = []
    for t, (name, engine) in enumerate(zip(names, opened, strict=True)):
        others = [run.artifact for _, _, run in _replayable(found, t)]
        with engine:
            replays.append(
                evaluate(
                    engine,
                    dataset,
                    others,
                    quantize_inputs=quantize_inputs,
                    measure_latency=False,
                    progress=None if progress is None else _stage(progress, f"replaying on {name}"),
                )
            )
    matrices = _matrices(names, parsed, found, attack_results, replays)
    settings = {"budget": budget, "quantize_inputs": quantize_inputs, "seed": seed, "dataset": dataset.spec}
    return BlackBoxTransfer(results=attack_results + replays, matrices=matrices, settings=settings)


def _stage(progress: Callable[[str, int, int], None], stage: str) -> Callable[[int, int], None]:
    return lambda total, advance: progress(stage, total, advance)


def _matrices(
    names: list[str],
    specs: list[BlackBoxSpec],
    found: list[list[BlackBoxRun]],
    attack_results: list[EvaluationResult],
    replays: list[EvaluationResult],
) -> list[TransferMatrix]:
    matrices = []
    for a, spec in enumerate(specs):
        asr: list[list[float | None]] = []
        adv: list[list[float | None]] = []
        for s in range(len(names)):
            row_asr: list[float | None] = []
            row_adv: list[float | None] = []
            for t in range(len(names)):
                if s == t:
                    metrics = attack_results[s].blackbox[a].metrics
                else:
                    order = [(src, att) for src, att, _ in _replayable(found, t)]
                    position = order.index((s, a)) if (s, a) in order else None
                    metrics = None if position is None else replays[t].perturbations[position].metrics
                row_asr.append(None if metrics is None else metrics.asr)
                row_adv.append(None if metrics is None else metrics.adv_acc)
            asr.append(row_asr)
            adv.append(row_adv)
        matrices.append(TransferMatrix(attack=spec.display, engines=list(names), asr=asr, adv_acc=adv))
    return matrices


def _replayable(found: list[list[BlackBoxRun]], target: int) -> list[tuple[int, int, BlackBoxRun]]:
    """(source engine, attack, run) of every other engine's attack that completed some images, in
    the order their artifacts are replayed on engine `target`."""
    return [
        (s, a, run)
        for s, runs in enumerate(found)
        if s != target
        for a, run in enumerate(runs)
        if run.outcome.completed.any()
    ]
