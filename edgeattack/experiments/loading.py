"""Reading experiment configs: YAML files or shipped names, overrides, and one clear error per problem.

Pydantic's validation errors become a single ConfigError listing, per problem, the key (as
`engines[0].precision`), the value given and what was expected; unknown keys get a did-you-mean.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from edgeattack.errors import ConfigError, did_you_mean
from edgeattack.experiments.config import ExperimentConfig

SHIPPED_CONFIGS = Path(__file__).parent / "configs"


def _location(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _describe(error: dict[str, Any], model: type[BaseModel]) -> str:
    where = _location(tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-"))))
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        key = str(error["loc"][-1])
        return f"{where}: unknown key{did_you_mean(key, _fields_at(model, error['loc'][:-1]))}"
    if error["type"] == "missing":
        return f"{where}: required key is missing"
    value = error.get("input")
    shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return f"{where}: got {shown}: {message}"


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        args = getattr(annotation, "__args__", ())
        current = next((a for a in (annotation, *args) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def validate_config(doc: Any, *, source: str = "config") -> ExperimentConfig:
    """An ExperimentConfig from a parsed document, or one ConfigError listing every problem."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a mapping of keys (name, models, engines, ...), got {type(doc).__name__}")
    try:
        return ExperimentConfig.model_validate(doc)
    except ValidationError as exc:
        problems = [_describe(e, ExperimentConfig) for e in exc.errors()]  # type: ignore[arg-type]
        raise ConfigError(f"{source} is not a valid experiment config:\n  " + "\n  ".join(problems)) from None


def resolve_config_path(text: str | Path) -> Path:
    """A config file, or the name of a shipped one (quickstart, desparsify, paper-imagenet)."""
    path = Path(text)
    if path.is_file():
        return path
    shipped = SHIPPED_CONFIGS / f"{path.name}.yaml"
    if path.suffix == "" and shipped.is_file():
        return shipped
    names = shipped_configs()
    raise ConfigError(f"no config file {str(text)!r}{did_you_mean(str(text), names)}; shipped configs: {', '.join(names)}")


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in SHIPPED_CONFIGS.glob("*.yaml"))


def load_config(path: str | Path, *, overrides: dict[str, Any] | None = None) -> ExperimentConfig:
    """Read and validate a YAML experiment config (a path or a shipped config's name).

    `overrides` maps dotted keys to values (`{"data.limit": 32}`) applied before validation.
    """
    import yaml

    file = resolve_config_path(path)
    try:
        doc = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(f"{file} is not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {file}: {exc}") from None
    for key, value in (overrides or {}).items():
        if not isinstance(doc, dict):
            break
        target = doc
        *parents, last = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {key}: {part} is not a mapping in {file}")
        target[last] = value
    return validate_config(doc, source=str(file))
