"""DynamicViT's pruning schedule, without torch: where the prediction modules sit, how many tokens each keeps.

DynamicViT (Rao et al., NeurIPS 2021) inserts three prediction modules into a ViT of depth 12,
before blocks 3, 6 and 9 (0-based: after 3, 6 and 9 blocks), keeping the fractions ρ, ρ², ρ³ of
the *initial* patch tokens (the class token is always kept). At inference stage s keeps the static
`k_s = int(N · ρ^(s+1))` highest-scoring patch tokens, so the per-block token counts of a model
are fixed by (N, depth, ρ) alone: `token_schedule` gives them to the metrics (GFLOPs, TUR) on a
machine without torch.

Other depths: the locations are `round(depth · k / 4)` for k = 1, 2, 3 with Python's round (half
to even). For depth 12 that is 3/6/9 exactly. Where depth·k/4 falls on a half (depth = 4m + 2),
half-to-even always rounds the first and last location in opposite directions, so the schedule
stays symmetric (loc₁ + loc₃ = depth) like the reference's; for depth 6 it gives 2/3/4: two
full-token blocks, one at ρ, one at ρ², two at ρ³. The other symmetric choice, 1/3/5, would let
the first predictor score tokens after a single block (17 % of the depth against the reference's
25 %); 2/3/4 sees them after 2 blocks (33 %) and its token utilisation (0.646 at ρ = 0.7) is the
closest to the reference's 12-block one (0.633), against 0.620 for 1/3/5.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence

from edgeattack.errors import ConfigError

KEEP_RATES: tuple[float, ...] = (0.7, 0.6, 0.5)
"""The base keep rates ρ of the zoo's DynamicViT models (the paper's 0.7 / 0.6 / 0.5)."""

STAGE_FRACTIONS: tuple[float, ...] = (0.25, 0.5, 0.75)
"""Where the prediction modules sit, as fractions of the depth (blocks 3/6/9 of 12)."""

_RATE_SUFFIX = re.compile(r"_r(\d{2})$")


def check_keep_rate(rho: float, allowed: Sequence[float] | None = KEEP_RATES) -> float:
    """`rho` as a float if it is one of `allowed` (any value in (0, 1) when `allowed` is None)."""
    try:
        value = float(rho)
    except (TypeError, ValueError):
        raise ConfigError(f"keep rate must be a number, got {rho!r}") from None
    if allowed is not None:
        for rate in allowed:
            if math.isclose(value, rate, abs_tol=1e-9):
                return float(rate)
        raise ConfigError(f"unknown DynamicViT keep rate {rho!r}; choose one of {', '.join(str(r) for r in allowed)}")
    if not 0.0 < value < 1.0:
        raise ConfigError(f"DynamicViT keep rate must lie in (0, 1), got {rho!r}")
    return value


def keep_ratios_for(rho: float, stages: int = 3) -> tuple[float, ...]:
    """ρ, ρ², ρ³ (fractions of the initial patch tokens kept after each stage)."""
    return tuple(rho ** (s + 1) for s in range(stages))


def prune_locations_for(depth: int) -> tuple[int, ...]:
    """Blocks before which the predictors run: round(depth·k/4), k = 1..3 (3/6/9 for 12, 2/3/4 for 6)."""
    locations = tuple(round(depth * f) for f in STAGE_FRACTIONS)
    return check_prune_locations(locations, depth)


def check_prune_locations(locations: Sequence[int], depth: int) -> tuple[int, ...]:
    """`locations` as a tuple if strictly increasing block indices in [1, depth - 1], else ConfigError."""
    locs = tuple(int(loc) for loc in locations)
    if not locs:
        raise ConfigError("DynamicViT needs at least one prune location")
    if any(b <= a for a, b in itertools.pairwise(locs)) or locs[0] < 1 or locs[-1] > depth - 1:
        raise ConfigError(
            f"prune locations {list(locs)} must be strictly increasing block indices in [1, {depth - 1}] "
            f"for a ViT of depth {depth}"
        )
    return locs


def kept_patches(num_patches: int, ratio: float) -> int:
    """Patch tokens kept at a stage: int(N·ratio), truncated as the reference code does (at least 1).

    The single definition used by the models and by the FLOPs count (`edgeattack.metrics.flops`).
    """
    return max(1, int(num_patches * ratio))


def token_schedule(
    num_patches: int, depth: int, rho: float, prune_locations: Sequence[int] | None = None
) -> tuple[int, ...]:
    """Tokens (class token included) each block processes at inference, block by block."""
    locations = prune_locations_for(depth) if prune_locations is None else check_prune_locations(prune_locations, depth)
    ratios = keep_ratios_for(rho, len(locations))
    counts, current, stage = [], num_patches + 1, 0
    for block in range(depth):
        if stage < len(locations) and block == locations[stage]:
            current = kept_patches(num_patches, ratios[stage]) + 1
            stage += 1
        counts.append(current)
    return tuple(counts)


def token_utilisation(schedule: Sequence[int], num_patches: int) -> float:
    """TUR of a schedule: tokens summed over blocks / (blocks × tokens), class token counted in both."""
    return float(sum(schedule)) / (len(schedule) * (num_patches + 1))


def rate_suffix(rho: float) -> str:
    """'r07' for 0.7."""
    return f"r{round(rho * 10):02d}"


def rate_from_name(name: str) -> float:
    """The keep rate a zoo name ends with ('..._r07' -> 0.7); ConfigError if it is not a known one."""
    match = _RATE_SUFFIX.search(name)
    if match is None:
        raise ConfigError(f"DynamicViT model name {name!r} does not end with a keep rate suffix such as _r07")
    return check_keep_rate(int(match.group(1)) / 10)


def dynamicvit_name(teacher_name: str, rho: float) -> str:
    """The DynamicViT zoo name for a teacher: vit_tiny_digits -> dynamicvit_tiny_digits_r07."""
    base = teacher_name.removeprefix("vit_")
    return f"dynamicvit_{base}_{rate_suffix(rho)}"
