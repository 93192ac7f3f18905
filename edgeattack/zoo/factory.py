"""`create_model`: a zoo name -> a torch module that takes [0,1] images and normalises inside.

Weights are chosen, never guessed: an explicit `checkpoint` (safetensors, or `.pth` read with
`weights_only=True`; `edgeattack.zoo.checkpoint` turns every bad file into one clear error), the
package's shipped safetensors (the default of the digits models), timm's pretrained weights
(`pretrained=True`: online, or from the local Hugging Face cache), or random weights asked for on
purpose (`random_weights=True`). A model without shipped weights given none of these is a
`WeightsRequiredError`. `model.weights_source` records which ("shipped", "pretrained:timm",
"checkpoint:<file name>", "random").
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

from edgeattack._io import sha256_file
from edgeattack._lazy import require
from edgeattack.errors import ConfigError, EdgeAttackError
from edgeattack.zoo.checkpoint import DEFAULT_LAYOUTS, read_checkpoint
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
        self.weights_source = "random"
        """Where the weights came from: "shipped", "pretrained:timm", "checkpoint:<file name>" or "random"."""
        channels = config.input_size[0]
        self.register_buffer("mean", torch.tensor(config.mean[:channels]).view(1, channels, 1, 1))
        self.register_buffer("std", torch.tensor(config.std[:channels]).view(1, channels, 1, 1))

    def forward(self, images: Any) -> Any:
        return self.net((images - self.mean) / self.std)

    def extra_repr(self) -> str:
        return f"name={self.model_name}, weights={self.weights_source}"

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


class WeightsRequiredError(ConfigError):
    """A model without shipped weights was asked for without saying which weights to use."""


def weights_help(name: str) -> str:
    """How to give `name` weights, in CLI terms."""
    return (
        f"{name} has no shipped weights: pass --pretrained (timm's weights, online or from a local Hugging Face "
        "cache under HF_HOME), --checkpoint FILE (.safetensors or .pth), or --random-weights to use random weights "
        "on purpose"
    )


def check_weight_options(
    name: str, *, pretrained: bool | None, checkpoint: str | Path | None, random_weights: bool
) -> None:
    """Refuse weight options that contradict each other (ConfigError naming the pair)."""
    if pretrained and checkpoint is not None:
        raise ConfigError(f"{name}: --pretrained and --checkpoint both choose weights; pass one of them")
    if random_weights and checkpoint is not None:
        raise ConfigError(f"{name}: --random-weights and --checkpoint contradict each other; pass one of them")
    if random_weights and pretrained:
        raise ConfigError(f"{name}: --random-weights and --pretrained contradict each other; pass one of them")


def create_model(
    name: str,
    *,
    pretrained: bool | None = None,
    checkpoint: str | Path | None = None,
    random_weights: bool = False,
    **overrides: Any,
) -> ZooModel:
    """Build zoo model `name` in eval mode, with the weights asked for.

    `checkpoint` loads a weights file. `pretrained=True` asks timm for its pretrained weights
    (`timm.create_model(..., pretrained=True)`: downloaded, or read from the local Hugging Face
    cache; a clear error when neither works); for a model with shipped weights it means those.
    `random_weights=True` keeps the random initialisation on purpose; `pretrained=False` says the
    same for code that only means "do not load shipped or pretrained weights" (training from
    scratch, rebuilding an architecture). With none of these, a model with shipped weights loads
    them and any other model raises WeightsRequiredError. `overrides` go to the builder (and for
    timm names to `timm.create_model`, e.g. `pretrained_cfg_overlay`).
    """
    check_weight_options(name, pretrained=pretrained, checkpoint=checkpoint, random_weights=random_weights)
    entry = get_entry(name)
    has_own = entry.shipped or bool(entry.weights_of)
    if random_weights and entry.weights_of:
        raise ConfigError(
            f"{name} has no weights of its own: it runs on {entry.weights_of}'s shipped weights, which "
            "--random-weights cannot replace (pass --checkpoint to run it on other weights)"
        )
    if checkpoint is None and not has_own and pretrained is None and not random_weights:
        raise WeightsRequiredError(weights_help(name))
    want_timm = bool(pretrained) and not has_own and checkpoint is None
    kwargs = dict(overrides)
    if want_timm:
        kwargs["pretrained"] = True
    try:
        net = entry.load_target()(name, entry.config, **kwargs)
    except EdgeAttackError:
        raise
    except Exception as exc:
        if want_timm:
            raise EdgeAttackError(_pretrained_failure(name, exc)) from exc
        raise
    model = ZooModel(net, entry.config, name)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    elif want_timm:
        model.weights_source = "pretrained:timm"
    elif entry.weights_of:
        model.weights_source = f"shipped:{entry.weights_of}"  # loaded by the builder (a parameter-free mechanism)
    elif entry.shipped and pretrained is not False and not random_weights:
        found = shipped_weights(name)
        if found is None:
            logger.warning("no shipped weights for %s yet: using random weights", name)
        else:
            load_checkpoint(model, found[0])
            model.weights_source = "shipped"
    if not model.weights_sha256:
        model.weights_sha256 = state_dict_sha256(model)
    return model.eval()


def _pretrained_failure(name: str, exc: BaseException) -> str:
    """One line: why timm could not give `name`'s pretrained weights, and what to do instead."""
    offline, cache = _hub_state()
    where = f"offline (HF_HUB_OFFLINE) and not in the Hugging Face cache {cache}" if offline else "download failed"
    return (
        f"cannot get timm's pretrained weights for {name}: {where} ({type(exc).__name__}: {_first_sentence(exc)}); "
        "go online once to fill the cache (HF_HOME), or pass --checkpoint FILE, or --random-weights"
    )


def _first_sentence(exc: BaseException) -> str:
    return _first_line(exc).split(". ", 1)[0][:120]


def _hub_state() -> tuple[bool, str]:
    """(offline?, the Hugging Face hub cache directory) as huggingface_hub sees them now."""
    try:
        from huggingface_hub import constants
    except ImportError:
        return False, "(huggingface_hub is not installed)"
    return bool(constants.HF_HUB_OFFLINE), str(constants.HF_HUB_CACHE)


def load_checkpoint(model: ZooModel, path: str | Path) -> ZooModel:
    """Load a checkpoint into `model`: keys of the whole ZooModel ("net." prefixed) or of the bare net.

    A bare net's checkpoint may be in an official repository's layout: the net reads the wrapper
    keys it names in `checkpoint_layouts` (default `DEFAULT_LAYOUTS`), and its
    `adapt_checkpoint(CheckpointFile)`, when it has one, turns the official names and shapes into
    its own (and may take options such as A-ViT's gate from the saved training args).
    """
    net = model.net
    checkpoint = read_checkpoint(path, layouts=getattr(net, "checkpoint_layouts", DEFAULT_LAYOUTS))
    adapt = getattr(net, "adapt_checkpoint", None)
    state = checkpoint.state
    if any(key.startswith("net.") for key in state):  # a whole ZooModel, as edgeattack saves one
        target = model
        own = {key.removeprefix("net."): value for key, value in state.items() if key.startswith("net.")}
        if callable(adapt):
            own = adapt(dataclasses.replace(checkpoint, state=own))
        rest = {key: value for key, value in state.items() if not key.startswith("net.")}
        state = {"mean": model.mean, "std": model.std, **rest, **{f"net.{key}": value for key, value in own.items()}}
    else:
        target = net
        if callable(adapt):
            state = adapt(checkpoint)
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
    model.weights_source = f"checkpoint:{Path(path).name}"
    if checkpoint.layout:
        logger.info("loaded %s from %s[%r]", model.model_name, path, checkpoint.layout)
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
