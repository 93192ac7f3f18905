"""`create_model`: a zoo name -> a torch module that takes [0,1] images and normalises inside.

Weights come from, in order: an explicit `checkpoint` (safetensors, or `.pth` read with
`weights_only=True`; `edgeattack.zoo.checkpoint` turns every bad file into one clear error), the
package's shipped safetensors, or timm's pretrained download.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from edgeattack._io import sha256_file
from edgeattack._lazy import require
from edgeattack.errors import ConfigError, EdgeAttackError
from edgeattack.zoo.checkpoint import read_state_dict
from edgeattack.zoo.config import ModelConfig
from edgeattack.zoo.manifest import shipped_weights
from edgeattack.zoo.registry import get_entry

logger = logging.getLogger(__name__)

torch = require("torch", feature="the PyTorch zoo")
nn = torch.nn


class ZooModel(nn.Module):
    """A classifier over [0,1] images: `net((x - mean) / std)`, with its config and provenance."""

    def __init__(self, net: Any, config: ModelConfig, name: str, weights_sha256: str = "") -> None:
        super().__init__()
        self.net = net
        self.config = config
        self.model_name = name
        self.weights_sha256 = weights_sha256
        channels = config.input_size[0]
        self.register_buffer("mean", torch.tensor(config.mean[:channels]).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(config.std[:channels]).view(1, channels, 1, 1))

    def forward(self, images: Any) -> Any:
        return self.net((images - self.mean) / self.std)

    @property
    def token_sparse(self) -> bool:
        """True when the network drops tokens per image (ATS, A-ViT, AdaViT: `edgeattack.sparsity.base`)."""
        net = self.net
        return (
            callable(getattr(net, "forward_counts", None))
            and callable(getattr(net, "usage", None))
            and bool(getattr(net, "mechanism", ""))
        )

    def forward_counts(self, images: Any) -> tuple[Any, Any]:
        """(logits, token counts int64 [N, depth]) of [0,1] images; token-sparse models only."""
        self._require_token_sparse()
        return self.net.forward_counts((images - self.mean) / self.std)

    def usage(self, images: Any) -> tuple[Any, Any]:
        """(logits, differentiable token usage [N, depth] in [0,1]) of [0,1] images; token-sparse models only."""
        self._require_token_sparse()
        return self.net.usage((images - self.mean) / self.std)

    def _require_token_sparse(self) -> None:
        if not self.token_sparse:
            raise ConfigError(f"model {self.model_name} is not token-sparse (ats/avit/adavit)")


def create_model(
    name: str,
    *,
    pretrained: bool | None = None,
    checkpoint: str | Path | None = None,
    **overrides: Any,
) -> ZooModel:
    """Build zoo model `name` in eval mode.

    `pretrained=None` means: shipped weights when the package has them, random weights otherwise.
    `pretrained=True` for a timm name downloads timm's weights (fails offline with a clear error).
    """
    entry = get_entry(name)
    builder = entry.load_target()
    want_timm_download = bool(pretrained) and not entry.shipped and checkpoint is None
    kwargs = dict(overrides)
    if want_timm_download:
        kwargs["pretrained"] = True
    try:
        net = builder(name, entry.config, **kwargs)
    except EdgeAttackError:
        raise
    except Exception as exc:
        if want_timm_download:
            raise EdgeAttackError(
                f"cannot fetch pretrained weights for {name} ({type(exc).__name__}: {str(exc)[:200]}); "
                "offline, pass --checkpoint with a local safetensors/.pth file"
            ) from exc
        raise
    model = ZooModel(net, entry.config, name)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    elif entry.shipped and pretrained is not False:
        found = shipped_weights(name)
        if found is None:
            logger.warning("no shipped weights for %s yet: using random weights", name)
        else:
            load_checkpoint(model, found[0])
    if not model.weights_sha256:
        model.weights_sha256 = state_dict_sha256(model)
    return model.eval()


def load_checkpoint(model: ZooModel, path: str | Path) -> ZooModel:
    """Load a checkpoint into `model`: keys of the whole ZooModel ("net." prefixed) or of the bare net."""
    state = read_state_dict(path)
    if any(key.startswith("net.") for key in state):
        target, state = model, dict(state)
        state.setdefault("mean", model.mean)
        state.setdefault("std", model.std)
    else:
        target = model.net
    try:
        result = target.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that differ: another width, depth or number of classes
        raise EdgeAttackError(f"checkpoint {path} does not fit {model.model_name}: {_first_line(exc)}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise EdgeAttackError(
            f"checkpoint {path} does not fit {model.model_name}: "
            f"missing {list(result.missing_keys)[:5]}, unexpected {list(result.unexpected_keys)[:5]}"
        )
    model.weights_sha256 = sha256_file(path)
    return model


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip() and "Error(s) in loading" not in line]
    return (lines[0] if lines else type(exc).__name__)[:200]


def state_dict_sha256(model: Any) -> str:
    """sha256 over a module's tensors in key order (identifies random or in-memory weights)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def count_parameters(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))
