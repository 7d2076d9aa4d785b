"""Typed configs: a YAML file plus ``key=value`` overrides into a dataclass, validated early.

Every command has one config dataclass; this module holds the loader they share and the
config of the conscience itself (used by ``ask``, ``review``, ``serve`` and ``eval``).

A field's allowed values are declared once, on the field: numbers with ``bounded(...)``, names
with a ``Literal`` annotation (:mod:`conscience.choices`; argparse reads its ``choices`` from the
same annotation with :func:`choices_of`). :func:`check_fields` enforces them when the dataclass is
built — whether from YAML, from ``key=value`` overrides or from Python — so a bad value is refused
before any model loads.

A config may hold another (``TrainConfig.conscience`` is a :class:`ConscienceConfig`): YAML
nests it as a mapping, overrides use dotted keys (``conscience.threshold=0.4``), and errors name
the dotted key.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml

from .choices import Dtype, ReviewFormat, VerdictKind
from .errors import ConscienceError
from .framings import load_yaml, read_yaml

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

DTYPES = get_args(Dtype)
VERDICT_KINDS = get_args(VerdictKind)
REVIEW_FORMATS = get_args(ReviewFormat)


def bounded(default: Any, bounds: Bounds) -> Any:
    """A dataclass field whose value (when not None) must lie within ``bounds``."""
    return dataclasses.field(default=default, metadata={"bounds": bounds})


def parsed(default: Any, parse: typing.Callable[[Any], Any]) -> Any:
    """A dataclass field whose value is whatever ``parse`` makes of it (``ValueError`` saying what
    it must be). YAML, ``key=value`` overrides, Python and argparse (:func:`argparse_type_of`) all
    go through the same ``parse``, so the field's syntax is written once."""
    return dataclasses.field(default=default, metadata={"parse": parse})


RECALL_PREFIX = "recall:"


def parse_threshold(value: Any) -> float | str:
    """A flagging threshold: a number in [0, 1], or ``recall:X`` (0 < X <= 1), the threshold that
    flags a share X of misaligned answers in the card's cross-validation (resolved when the card is
    loaded, :mod:`conscience.verdict.operating_point`). Returns the float, or ``recall:X`` spelled
    canonically (a string, so that configs still dump to YAML and JSON as they are)."""
    if isinstance(value, str) and value.strip().lower().startswith(RECALL_PREFIX):
        target = value.strip()[len(RECALL_PREFIX):].strip()
        number = float(target) if _FLOAT_TEXT.fullmatch(target) else math.nan
        if not 0 < number <= 1:  # NaN fails too
            raise ValueError(f"must be recall:X with X in (0, 1], got {_short(value)}")
        return f"{RECALL_PREFIX}{number!r}"
    if isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        value = float(value)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"must be a number in [0, 1] or recall:X with X in (0, 1], got {_short(value)}")
    if not math.isfinite(value) or not PROBABILITY.admits(value):
        raise ValueError(f"must {PROBABILITY.describe()}, got {_short(value)}")
    return float(value)


def recall_target(threshold: float | str) -> float | None:
    """X of a parsed ``recall:X`` threshold; None for a plain number."""
    return float(threshold[len(RECALL_PREFIX):]) if isinstance(threshold, str) else None


@functools.cache
def type_hints(cls: type) -> dict[str, Any]:
    """A config class's field annotations, resolved (the modules use postponed annotations)."""
    return typing.get_type_hints(cls)


def _literal_options(annotation: Any) -> tuple | None:
    """The values of a ``Literal`` annotation, also inside ``X | None``; None for other types."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            found = _literal_options(option)
            if found is not None:
                return found
    return None


def _optional(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation)


def argparse_type_of(cls: type, name: str) -> typing.Callable[[str], Any]:
    """The argparse ``type`` of a :func:`parsed` field: its own parser, its ``ValueError`` turned
    into argparse's one-line usage error (``argument --threshold: must ...``)."""
    parse = next(f for f in dataclasses.fields(cls) if f.name == name).metadata["parse"]

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name  # argparse names the type in some messages
    return convert


def choices_of(cls: type, name: str) -> tuple:
    """The allowed values of field ``name`` of config ``cls``, read from its ``Literal`` annotation
    (for argparse ``choices``, so that the list is written only on the field)."""
    options = _literal_options(type_hints(cls)[name])
    if options is None:
        raise TypeError(f"{cls.__name__}.{name} is not annotated with a Literal")
    return options


def check_fields(config: Any) -> None:
    """Refuse, with a ``ValueError`` naming the key, the first field that is a non-finite number
    or lies outside its declared bounds or ``Literal`` choices. Called from each config's
    ``__post_init__``. A nested config has checked itself when it was built."""
    hints = type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        parse = f.metadata.get("parse")
        if parse is not None:  # a parsed field holds its parsed value, however it was given
            try:
                object.__setattr__(config, f.name, parse(value))
            except ValueError as exc:
                raise ValueError(f"{f.name} {exc}") from None
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{f.name} must be a finite number, got {value}")
        bounds = f.metadata.get("bounds")
        if bounds is not None and value is not None and not bounds.admits(value):
            raise ValueError(f"{f.name} must {bounds.describe()}, got {_short(value)}")
        hint = hints[f.name]
        choices = _literal_options(hint)
        if choices is not None and value not in choices and not (value is None and _optional(hint)):
            raise ValueError(f"{f.name} must be one of {list(choices)}, got {_short(value)}")
        if dataclasses.is_dataclass(hint) and not isinstance(value, hint):
            raise ValueError(f"{f.name} must be a {hint.__name__} (in YAML: a mapping of its keys), "
                             f"got {_short(value)}")


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
    if dataclasses.is_dataclass(annotation):  # a nested config: a mapping of its own keys
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key} must be a mapping of {annotation.__name__} keys, got {_short(value)}")
        return build_config(annotation, value, source, prefix=f"{key}.")
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
            out[key.strip()] = load_yaml(raw) if raw != "" else ""  # aliases bounded, as in files
        except (yaml.YAMLError, ValueError, RecursionError):  # ValueError: an integer beyond Python's digit limit
            out[key.strip()] = raw
    return out


def build_config(cls: type[T], values: dict[str, Any], source: str = "config", prefix: str = "") -> T:
    """Instantiate ``cls`` from a mapping, rejecting unknown keys and ill-typed values. ``prefix``
    (``"conscience."``) is where a nested config sits, so that errors name the dotted key."""
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(str(k) for k in set(values) - set(fields))  # YAML keys need not be strings
    if unknown:
        where = f" of {prefix.rstrip('.')}" if prefix else ""
        raise ConfigError(f"{source}: unknown key(s) {[prefix + k for k in unknown]}; known keys{where}: "
                          f"{sorted(fields)}{_moved(cls, unknown)}")
    hints = type_hints(cls)
    # a parsed field is checked by its own parser (in check_fields), not by its annotation
    kwargs = {k: v if "parse" in fields[k].metadata else _coerce(v, hints[k], prefix + k, source)
              for k, v in values.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: {_name_nested(str(exc), cls, prefix)}") from None


def _moved(cls: type, unknown: list[str]) -> str:
    """`` (threshold is conscience.threshold)``: an unknown key that belongs to a nested config."""
    hints = type_hints(cls)
    moved = [f"{k} is {name}.{k}" for k in unknown for name, hint in hints.items()
             if dataclasses.is_dataclass(hint) and k in {f.name for f in dataclasses.fields(hint)}]
    return f" ({'; '.join(moved)})" if moved else ""


def _name_nested(message: str, cls: type, prefix: str) -> str:
    """A nested config's own error, naming its dotted key: ``threshold must …`` becomes
    ``conscience.threshold must …``, and any other message is put under ``conscience: ``."""
    if not prefix:
        return message
    first = re.match(r"[A-Za-z_]\w*", message)
    if first and first.group() in {f.name for f in dataclasses.fields(cls)}:
        return prefix + message
    return f"{prefix.rstrip('.')}: {message}"


def merge_values(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """``extra`` over ``base``: a dotted key (``conscience.threshold``) sets a key of a nested
    mapping, and two mappings under one key are merged, so an override changes only what it names."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(key, str) and "." in key.strip(".") and not key.startswith("."):
            head, rest = key.split(".", 1)
            value = {rest: value}
            key = head
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            value = merge_values(out[key], value)
        out[key] = value
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The YAML mapping of a config file (empty file: no keys), its problems named one line each."""
    try:
        doc = read_yaml(path)
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: {utf8_problem(exc)}") from None
    except ValueError as exc:  # the YAML parser's own limits, e.g. an integer of more than 4,300 digits
        raise ConfigError(f"{path}: {str(exc).splitlines()[0]}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the config must be a YAML mapping of key: value")
    return doc


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | dict | None = None,
                base: dict[str, Any] | None = None, name: str | None = None) -> T:
    """``base`` (defaults below the file), then ``path`` (a YAML mapping, optional), then overrides
    (``key=value`` strings or a mapping; dotted keys reach nested configs); build ``cls``. Errors
    start with the file, or with ``name`` (e.g. the command) when there is none."""
    values: dict[str, Any] = merge_values({}, base or {})
    source = name or "config"
    if path:
        values = merge_values(values, read_config_file(path))
        source = str(path)
    if overrides:
        extra = overrides if isinstance(overrides, dict) else parse_overrides(list(overrides))
        values = merge_values(values, extra)
        source = f"{path} + overrides" if path else name or "overrides"
    return build_config(cls, values, source)


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)
