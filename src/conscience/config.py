"""Typed configs: a YAML file plus ``key=value`` overrides into a dataclass, validated early.

Every command has one config dataclass; this module holds the loader they share and the
config of the conscience itself (used by ``ask``, ``review``, ``serve`` and ``eval``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import ConscienceError
from .framings import MODES, read_yaml

T = TypeVar("T")


class ConfigError(ConscienceError):
    """A config file or override is invalid; the message names the key and the source."""


def _coerce(value: Any, annotation: Any, key: str, source: str) -> Any:
    """Check (and gently convert) ``value`` against a field's type annotation."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key, source)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{source}: {key}: invalid value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        (inner, *_) = typing.get_args(annotation) or (Any,)
        return [_coerce(v, inner, key, source) for v in value]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return value
    if annotation is Any:
        return value
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
    return value


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["lr=1e-4", "lora=true"]`` → ``{"lr": 1e-4, "lora": True}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must have the form key=value")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def build_config(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Instantiate ``cls`` from a mapping, rejecting unknown keys and ill-typed values."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; known keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], k, source) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | dict | None = None) -> T:
    """Read ``path`` (YAML mapping, optional), apply overrides, and build ``cls``."""
    values: dict[str, Any] = {}
    source = "config"
    if path:
        doc = read_yaml(path)
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: the config must be a YAML mapping of key: value")
        values.update(doc)
        source = str(path)
    if overrides:
        extra = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
        values.update(extra)
        if path is None:
            source = "overrides"
    return build_config(cls, values, source)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


VERDICT_KINDS = ("auto", "verbal", "latent", "combined")


@dataclass
class ConscienceConfig:
    """How to build a conscience: model, questions, verdict kind and revision loop."""

    model: str = "bundled"
    adapter: str | None = None
    dtype: str = "float32"
    threads: int | None = None
    mode: str = "chat"
    framings_file: str | None = None
    framings: list[str] | None = None
    question: str | None = None
    verdict: str = "auto"  # latent where a card exists (shipped for bundled), else verbal
    review_format: str = "look_back"
    conscience_card: str | None = None
    threshold: float = 0.5
    max_rounds: int = 2
    max_new_tokens: int = 256
    temperature: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.verdict not in VERDICT_KINDS:
            raise ValueError(f"verdict must be one of {list(VERDICT_KINDS)}, got {self.verdict!r}")
        if self.review_format not in ("third_person", "look_back"):
            raise ValueError(f"review_format must be 'third_person' or 'look_back', got {self.review_format!r}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")
        if self.max_rounds < 0:
            raise ValueError(f"max_rounds must be >= 0, got {self.max_rounds}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.question is not None and self.framings:
            raise ValueError("give either question or framings, not both")
