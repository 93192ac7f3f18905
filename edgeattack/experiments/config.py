"""The experiment config (`edgeattack run experiment.yaml`), validated before anything runs.

One YAML document names the models, the engines every model is exported to, the white-box attacks
(crafted on each model, or on the int8 twin of one of its engines), the black-box attacks run on
every engine, the availability study of the token-sparse models, the metrics, the data and the
executor. Validation is pydantic's, turned into one ConfigError that says, per problem, which key,
which value and what was expected.
"""

from __future__ import annotations

import hashlib
import json
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from edgeattack.errors import ConfigError, did_you_mean

WHITEBOX_METHODS = (
    "fgsm",
    "pgd",
    "pgd-l2",
    "mifgsm",
    "uap",
    "uap-sgd",
    "desparsify",
    "apgd",
    "apgd-t",
    "fab",
    "fab-t",
    "square",
    "autoattack",
    "cw-l2",
    "deepfool",
)
"""The white-box registry's names (`edgeattack.attacks.whitebox.WHITEBOX_ATTACKS`, which imports torch)."""
UNIVERSAL_METHODS = ("uap", "uap-sgd")
UNIVERSAL_DESPARSIFY = ("universal", "class-universal", "patch")
TOKEN_SPARSE_FAMILIES = ("ats", "avit", "adavit")
"""Families with input-dependent token counts (DeSparsify, availability, token depth); DynamicViT keeps a fixed ratio."""
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"


def _number(value: Any) -> Any:
    """Numbers, and strings such as "8/255" or "0.5"."""
    if isinstance(value, str):
        try:
            return float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            raise ValueError(f"expected a number or a fraction such as 8/255, got {value!r}") from None
    return value


Number = Annotated[float, BeforeValidator(_number)]
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=80)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """Which images: "digits" (embedded) or an ImageNet-style folder, and which split does what."""

    dataset: str = "digits"
    eval_split: str = "test"
    fit_split: str = "val"
    calib_split: str = "train"
    limit: int | None = Field(default=None, ge=1, description="images evaluated (first N of eval_split)")
    fit_limit: int | None = Field(default=None, ge=1, description="images universal perturbations are fitted on")
    calib_images: int = Field(default=128, ge=1)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("expected 'digits' or the path of an ImageNet-style folder (root/<split>/<class>/*.jpg)")
        return value

    @property
    def folder(self) -> str | None:
        """The image folder's path, or None for the embedded digits (checked before a run, not here)."""
        return None if self.dataset == "digits" else self.dataset


class ModelSpec(_Strict):
    """A zoo name (tiny digits models, timm DeiT names, compressed families) and the weights it runs on.

    A model with shipped weights (the digits zoo) needs nothing; any other names one of
    `checkpoint: FILE` (.safetensors or .pth, hashed by content), `pretrained: true` (timm's
    weights, from the local Hugging Face cache or downloaded) or `random_weights: true` (random
    initialisation, on purpose). Whether the checkpoint exists is checked before a run, so
    `--dry-run` still prints the plan.
    """

    name: str
    checkpoint: str | None = None
    pretrained: bool | None = None
    random_weights: bool = False

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _weights(self) -> ModelSpec:
        chosen = [k for k in ("checkpoint", "pretrained", "random_weights") if getattr(self, k) not in (None, False)]
        if len(chosen) > 1:
            raise ValueError(f"{self.name}: {' and '.join(chosen)} both choose weights; give one of them")
        return self

    def weights(self) -> dict[str, Any]:
        """The keyword arguments `create_model` takes for these weights."""
        return {"checkpoint": self.checkpoint, "pretrained": self.pretrained, "random_weights": self.random_weights}


class EngineSpec(_Strict):
    """How every model is deployed: torch (reference), ONNX Runtime, or a TensorRT plan."""

    name: Name
    target: Literal["torch", "onnx", "tensorrt"] = "onnx"
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    quantization: Literal["static", "dynamic"] = "static"
    preset: Literal["cpu", "gpu", "full"] = "cpu"
    sparse: bool = False
    token_cap: str | None = None
    providers: list[str] | None = None
    resources: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> EngineSpec:
        if self.target == "torch" and self.precision != "fp32":
            raise ValueError("a torch engine is the fp32 reference: precision must be fp32")
        if self.sparse and self.target != "tensorrt":
            raise ValueError("sparse (2:4 kernels) needs target: tensorrt")
        if self.target == "tensorrt" and self.precision == "int8" and self.quantization != "static":
            raise ValueError("TensorRT int8 is built from explicit Q/DQ: quantization must be static")
        if self.token_cap is not None and self.target == "torch":
            raise ValueError("token_cap is part of an exported graph: use target onnx or tensorrt")
        if any(v <= 0 for v in self.resources.values()):
            raise ValueError("resources must be positive amounts, e.g. {GPU: 1} or {jetson: 1}")
        return self

    @field_validator("token_cap")
    @classmethod
    def _cap(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from edgeattack.sparsity.defence import parse_token_cap

        try:
            parse_token_cap(str(value))
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return str(value)

    @property
    def is_twin_source(self) -> bool:
        """An engine whose int8 fake-quant twin can craft perturbations (static QDQ ONNX)."""
        return self.target == "onnx" and self.precision == "int8" and self.quantization == "static"


class WhiteboxSpec(_Strict):
    """A white-box attack crafted on every listed model (default all) at every eps, from every source."""

    name: Name
    method: str
    eps: list[Number] | None = Field(default=None, min_length=1)
    steps: int | None = Field(default=None, ge=1)
    step_size: Number | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    models: list[str] | None = None
    sources: list[str] = Field(default_factory=lambda: ["model"], min_length=1)

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        if value not in WHITEBOX_METHODS:
            raise ValueError(f"unknown white-box method{did_you_mean(value, WHITEBOX_METHODS)}; choose one of {', '.join(WHITEBOX_METHODS)}")
        return value

    @field_validator("eps")
    @classmethod
    def _eps(cls, value: list[float] | None) -> list[float] | None:
        if value is None:
            return value
        if any(not 0 < e <= 1e3 for e in value):
            raise ValueError("every eps must be > 0")
        if len(set(value)) != len(value):
            raise ValueError("eps values repeat")
        return value

    @field_validator("sources")
    @classmethod
    def _sources(cls, value: list[str]) -> list[str]:
        for source in value:
            if source != "model" and not source.startswith("twin:"):
                raise ValueError(f"a source is 'model' or 'twin:<int8 engine name>', got {source!r}")
        return value

    @model_validator(mode="after")
    def _budget(self) -> WhiteboxSpec:
        if self.variant == "patch" and self.eps is not None:
            raise ValueError("the patch variant has no eps: it replaces a patch_size x patch_size area (params: patch_size)")
        if self.variant != "patch" and self.eps is None:
            raise ValueError("eps is required: a list of budgets, e.g. [4/255, 8/255]")
        return self

    @property
    def budgets(self) -> list[float | None]:
        """The eps values, or [None] for an attack without one (the DeSparsify patch)."""
        return list(self.eps) if self.eps is not None else [None]

    @property
    def variant(self) -> str | None:
        return self.params.get("variant") if self.method == "desparsify" else None

    @property
    def universal(self) -> bool:
        """Fitted on the fit split (one delta for all images) rather than crafted per eval image."""
        return self.method in UNIVERSAL_METHODS or self.variant in UNIVERSAL_DESPARSIFY


class BlackboxSpec(_Strict):
    """A black-box attack (`NAME[:k=v,...]`, as `edgeattack evaluate -B`) run on every listed engine."""

    spec: str
    budget: int = Field(default=1000, ge=1)
    limit: int | None = Field(default=None, ge=1, description="images attacked (default: data.limit)")
    engines: list[str] | None = None
    models: list[str] | None = None

    @field_validator("spec")
    @classmethod
    def _spec(cls, value: str) -> str:
        from edgeattack.attacks.blackbox.registry import parse_spec

        try:
            parse_spec(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def label(self) -> str:
        return self.spec.replace("/", "_").replace(":", "-").replace(",", "-").replace("=", "")


class AvailabilitySpec(_Strict):
    """Clean vs DeSparsify on the token-sparse models' engines: TUR, GFLOPs, latency, memory, energy."""

    enabled: bool = True
    meter: str | None = None
    latency_images: int = Field(default=64, ge=0)
    latency_rounds: int = Field(default=5, ge=1)
    token_depth: bool = True


class MetricsSpec(_Strict):
    """Latency and memory settings of every replay evaluation."""

    latency_seconds: float = Field(default=1.0, ge=0)
    latency_runs: int = Field(default=10, ge=1)
    memory: bool = True
    batch_size: int = Field(default=64, ge=1)
    quantize_inputs: bool = False
    exclusive_timing: bool = Field(
        default=True,
        description="cells that time latency (replay, availability) run with no other cell beside them, "
        "so a process pool or Ray does not distort the latencies it reports",
    )


class ExecutorSpec(_Strict):
    """Where cells run: here one by one, a process pool, or Ray (a cluster, boards as Ray nodes)."""

    kind: Literal["local", "process", "ray"] = "local"
    workers: int = Field(default=1, ge=1)
    threads: int | None = Field(default=None, ge=1, description="CPU threads per cell (default: cores / workers)")
    ray_address: str | None = None
    gpus_per_torch_cell: float | None = Field(
        default=None,
        ge=0,
        description="Ray GPUs each torch-heavy cell (a craft) asks for; default: 1 when `device` is "
        "cuda, 0 when cpu, and with auto 1 only when the Ray cluster reports GPUs",
    )


class ExperimentConfig(_Strict):
    """The whole study."""

    name: Name
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="where torch-heavy cells (crafts) compute: auto is a GPU when the node has one"
    )
    data: DataConfig = Field(default_factory=DataConfig)
    models: list[ModelSpec] = Field(min_length=1)
    engines: list[EngineSpec] = Field(min_length=1)
    whitebox: list[WhiteboxSpec] = Field(default_factory=list)
    blackbox: list[BlackboxSpec] = Field(default_factory=list)
    availability: AvailabilitySpec = Field(default_factory=AvailabilitySpec)
    metrics: MetricsSpec = Field(default_factory=MetricsSpec)
    executor: ExecutorSpec = Field(default_factory=ExecutorSpec)
    transfer: Literal["all", "within-model"] = "all"

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[ModelSpec]) -> list[ModelSpec]:
        from edgeattack.zoo.registry import get_entry

        names = [m.name for m in value]
        if len(set(names)) != len(names):
            raise ValueError(f"models repeat: {sorted({n for n in names if names.count(n) > 1})}")
        for spec in value:
            try:
                entry = get_entry(spec.name)
            except KeyError as exc:
                raise ValueError(str(exc)) from None
            has_own = entry.shipped or bool(entry.weights_of)
            if not has_own and spec.checkpoint is None and spec.pretrained is None and not spec.random_weights:
                raise ValueError(
                    f"{spec.name} has no shipped weights: give it checkpoint: FILE, pretrained: true or random_weights: true"
                )
            if spec.random_weights and entry.weights_of:
                raise ValueError(f"{spec.name} runs on {entry.weights_of}'s shipped weights: random_weights cannot replace them")
        return value

    def missing_files(self) -> list[str]:
        """Every local file or folder the config names that is not there, one line each (empty when all are)."""
        return missing_files(self.data, self.models)

    @model_validator(mode="after")
    def _references(self) -> ExperimentConfig:
        engines = {e.name: e for e in self.engines}
        if len(engines) != len(self.engines):
            raise ValueError("engine names repeat")
        models = {m.name for m in self.models}
        attack_names = [w.name for w in self.whitebox]
        if len(set(attack_names)) != len(attack_names):
            raise ValueError("white-box attack names repeat")
        for i, attack in enumerate(self.whitebox):
            for model in attack.models or ():
                if model not in models:
                    raise ValueError(f"whitebox[{i}] ({attack.name}): model {model!r} is not in models{did_you_mean(model, models)}")
            for source in attack.sources:
                if source.startswith("twin:"):
                    engine = source.removeprefix("twin:")
                    if engine not in engines:
                        raise ValueError(f"whitebox[{i}] ({attack.name}): source {source!r} names no engine{did_you_mean(engine, engines)}")
                    if not engines[engine].is_twin_source:
                        raise ValueError(
                            f"whitebox[{i}] ({attack.name}): source {source!r}: only a static int8 ONNX engine has a fake-quant twin"
                        )
            if attack.variant == "ensemble" and len(attack.models or models) < 2:
                raise ValueError(f"whitebox[{i}] ({attack.name}): the ensemble variant needs at least two models")
        for i, attack in enumerate(self.blackbox):
            for engine in attack.engines or ():
                if engine not in engines:
                    raise ValueError(f"blackbox[{i}]: engine {engine!r} is not in engines{did_you_mean(engine, engines)}")
            for model in attack.models or ():
                if model not in models:
                    raise ValueError(f"blackbox[{i}]: model {model!r} is not in models{did_you_mean(model, models)}")
        labels = [b.label for b in self.blackbox]
        if len(set(labels)) != len(labels):
            raise ValueError("black-box attacks repeat (the same spec twice)")
        return self

    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def missing_files(data: DataConfig, models: list[ModelSpec]) -> list[str]:
    """The image folder and checkpoints among `data` and `models` that do not exist, one line each."""
    missing = []
    if data.folder is not None and not Path(data.folder).is_dir():
        missing.append(f"data.dataset: image folder {data.folder} does not exist (expected root/<split>/<class>/*.JPEG)")
    for spec in models:
        if spec.checkpoint is not None and not Path(spec.checkpoint).is_file():
            missing.append(f"models.{spec.name}.checkpoint: {spec.checkpoint} does not exist")
    return missing
