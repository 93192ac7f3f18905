"""The training loop every trainer shares, and where it runs (device, precision, torchrun ranks).

Importing this package imports no torch.
"""

from __future__ import annotations

from edgeattack.training.augment import apply_shift, random_shift, shift_offsets
from edgeattack.training.loop import LoopConfig, LoopResult, StepDiverged, run_training, warmup_cosine
from edgeattack.training.runtime import TrainRuntime, current_runtime, training_session, use_runtime

__all__ = [
    "LoopConfig",
    "LoopResult",
    "StepDiverged",
    "TrainRuntime",
    "apply_shift",
    "current_runtime",
    "random_shift",
    "run_training",
    "shift_offsets",
    "training_session",
    "use_runtime",
    "warmup_cosine",
]
