"""Black-box query attacks on deployed engines: numpy only, every query counted (DESIGN.md).

`EngineOracle` is the only door to an engine; `BlackBoxAttack` subclasses (Spatial, Salt-and-Pepper,
Linear-Search Blended Uniform Noise, HopSkipJump, Square) search through it; `run_blackbox` runs one
attack spec on an engine over a dataset and returns the result and the adversarial examples as a
perturbation artifact. Importing this package imports no torch.
"""

from __future__ import annotations

from edgeattack.attacks.blackbox.base import BlackBoxAttack, BlackBoxOutcome
from edgeattack.attacks.blackbox.oracle import EngineOracle, OracleStats, QueryBudgetExceeded
from edgeattack.attacks.blackbox.problem import Problem
from edgeattack.attacks.blackbox.registry import (
    BLACKBOX_ATTACKS,
    BlackBoxSpec,
    attack_class,
    describe_attacks,
    parse_spec,
)
from edgeattack.attacks.blackbox.result import BlackBoxResult, WorstCase, summarise, to_artifact, worst_case

__all__ = [
    "BLACKBOX_ATTACKS",
    "BlackBoxAttack",
    "BlackBoxOutcome",
    "BlackBoxResult",
    "BlackBoxSpec",
    "EngineOracle",
    "OracleStats",
    "Problem",
    "QueryBudgetExceeded",
    "WorstCase",
    "attack_class",
    "describe_attacks",
    "parse_spec",
    "summarise",
    "to_artifact",
    "worst_case",
]
