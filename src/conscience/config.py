"""Typed configs: a YAML file plus ``key=value`` overrides into a dataclass, validated early.

Every command has one config dataclass; this module holds the loader they share and the
config of the conscience itself (used by ``ask``, ``review``, ``serve`` and ``eval``).

A field's allowed values are declared once, on the field (``bounded(...)``, ``one_of(...)``),
and :func:`check_fields` enforces them when the dataclass is built — whether from YAML, from
``key=value`` overrides or from Python — so a bad number is refused before any model loads.
"""

from __future__ import annotations

import dataclasses
import math
import re
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


@dataclass(frozen=True)
class Bounds:
    """The numbers a field accepts: ``low``/``high`` (either may be absent), each closed unless
    marked open. ``also_zero`` admits exactly 0 as well (a temperature of 0 means
    greedy decoding, while a tiny positive one overflows the logits into NaN)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    also_zero: bool = False

    def admits(self, value: float) -> bool:
        if self.also_zero and value == 0:
            return True
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def describe(self) -> str:
        low, high = (f"{v:g}" if isinstance(v, float) else str(v) for v in (self.low, self.high))
        if self.low is not None and self.high is not None:
            text = f"lie in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            text = f"be {'>' if self.low_open else '>='} {low}"
        else:
            text = f"be {'<' if self.high_open else '<='} {high}"
        return f"be 0 or {text.removeprefix('be ')}" if self.also_zero else text


# Ranges shared by several configs, so each is written once.
PROBABILITY = Bounds(0, 1)  # scores, thresholds
POSITIVE = Bounds(0, low_open=True)
NON_NEGATIVE = Bounds(0)
AT_LEAST_ONE = Bounds(1)
# 0 is greedy; OpenAI's API stops at 2, and below 0.01 the scaled logits of a float32 model
# can overflow into NaN sampling.
TEMPERATURE = Bounds(0.01, 2, also_zero=True)
TOP_P = Bounds(0, 1, low_open=True)
SEED = Bounds(0, 2**32 - 1)  # numpy's seed range (transformers.set_seed seeds numpy too)
THREADS = Bounds(1, 1024)  # torch.set_num_threads fails on absurd counts

DTYPES = ("float32", "bfloat16", "float16")
VERDICT_KINDS = ("auto", "verbal", "latent", "combined")
REVIEW_FORMATS = ("look_back", "third_person")


def bounded(default: Any, bounds: Bounds) -> Any:
    """A dataclass field whose value (when not None) must lie within ``bounds``."""
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def one_of(default: Any, options: tuple) -> Any:
    """A dataclass field whose value must be one of ``options``."""
    return dataclasses.field(default=default, metadata={"choices": tuple(options)})


def check_fields(config: Any) -> None:
    """Refuse, with a ``ValueError`` naming the key, the first field that is a non-finite number
    or lies outside its declared bounds or choices. Called from each config's ``__post_init__``."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value}")
        bounds = f.metadata.get("bounds")
        if bounds is not None and value is not None and not bounds.admits(value):
            raise ValueError(f"{f.name} must {bounds.describe()}, got {_short(value)}")
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"{f.name} must be one of {list(choices)}, got {_short(value)}")


_FLOAT_TEXT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


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
        raise ConfigError(f"{source}: {key} must be an integer, got {_short(value)}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):  # YAML reads .nan and .inf as floats
                raise ConfigError(f"{source}: {key} must be a finite number, got {value}")
            try:
                return float(value)
            except OverflowError:  # an integer beyond the float range
                raise ConfigError(f"{source}: {key} is too large, got {_short(value)}") from None
        if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
            # YAML 1.1 reads 1e-2 (no dot) as text; a number field takes it as the number it spells
            return _coerce(float(value), annotation, key, source)
        raise ConfigError(f"{source}: {key} must be a number, got {_short(value)}")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool) and _short(value) == repr(value):
            return str(value)  # a short number given where text is expected (e.g. a model name)
        raise ConfigError(f"{source}: {key} must be a string, got {_short(value)}")
    return value


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` cut to one short line: error messages stay one line whatever was given."""
    if isinstance(value, int) and value.bit_length() >= 128:  # repr of a huge int is slow or refused
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def utf8_problem(exc: UnicodeDecodeError) -> str:
    """``not valid UTF-8 text (byte 0xff at offset 0)``: where a file stops being text."""
    return f"not valid UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})"


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["lr=1e-4", "lora=true"]`` → ``{"lr": 1e-4, "lora": True}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must have the form key=value")
        key, raw = item.split("=", 1)
        if not key.strip():
            raise ConfigError(f"override {item!r} has no key before '='")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw != "" else ""
        except (yaml.YAMLError, ValueError):  # ValueError: an integer beyond Python's digit limit
            out[key.strip()] = raw
    return out


def build_config(cls: type[T], values: dict[str, Any], source: str = "config") -> T:
    """Instantiate ``cls`` from a mapping, rejecting unknown keys and ill-typed values."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in set(values) - set(fields))  # YAML keys need not be strings
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
        try:
            doc = read_yaml(path)
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: {utf8_problem(exc)}") from None
        except ValueError as exc:  # the YAML parser's own limits, e.g. an integer of more than 4,300 digits
            raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None
        if doc is None:
            doc = {}
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: the config must be a YAML mapping of key: value")
        values.update(doc)
        source = str(path)
    if overrides:
        extra = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
        values.update(extra)
        source = f"{path} + overrides" if path else "overrides"
    return build_config(cls, values, source)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


@dataclass
class ConscienceConfig:
    """How to build a conscience: model, questions, verdict kind and revision loop."""

    model: str = "bundled"
    adapter: str | None = None
    dtype: str = one_of("float32", DTYPES)
    threads: int | None = bounded(None, THREADS)
    mode: str = one_of("chat", MODES)
    framings_file: str | None = None
    framings: list[str] | None = None
    question: str | None = None
    verdict: str = one_of("auto", VERDICT_KINDS)  # latent where a card exists (shipped for bundled), else verbal
    review_format: str = one_of("look_back", REVIEW_FORMATS)
    conscience_card: str | None = None
    threshold: float = bounded(0.5, PROBABILITY)
    max_rounds: int = bounded(2, NON_NEGATIVE)
    max_new_tokens: int = bounded(256, AT_LEAST_ONE)
    temperature: float = bounded(0.0, TEMPERATURE)
    seed: int = bounded(0, SEED)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.question is not None and not self.question.strip():
            raise ValueError("question is empty")
        if self.question is not None and self.framings:
            raise ValueError("give either question or framings, not both")
        if self.conscience_card is not None:
            from .verdict.card import CARD_JSON

            # Otherwise a mistyped folder falls back to the verbal verdict, after the model loads.
            if not (Path(self.conscience_card) / CARD_JSON).is_file():
                raise ValueError(f"conscience_card: {self.conscience_card} holds no {CARD_JSON}")
