"""The fields of a card's JSON, each read with its type checked.

A card may come from anywhere a user points (a file they were sent, a folder beside downloaded
weights), so every field :func:`~.card.load_card` reads goes through :class:`CardFields`: a
crafted value (``layers: "ab"``, ``format_version: "x"``, ``scale: "big"``, ``threshold: NaN``)
is a one-line :class:`~conscience.errors.DataFormatError` naming the file and the field, never a
traceback later. Whether the values make a usable card is :func:`~.card.refuse_degenerate`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..config import REVIEW_FORMATS
from ..errors import DataFormatError
from .spans import SpanPooling

_REQUIRED = object()
LARGEST_COUNT = 2**31  # sizes and counts on a card (hidden size, layers, records) are far below this
COMBINE_KEYS = ("latent", "verbal", "bias")  # the combined verdict's weights (verdict/latent.py)
CV_KEYS = ("latent", "verbal", "aligned")  # operating.cv: out-of-fold scores and labels (operating_point.py)

__all__ = ["CardFields", "REVIEW_FORMATS"]


def _shown(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:  # an integer beyond the float range
        return False


class CardFields:
    """Typed reads of the fields of ``meta``, the JSON object of the card file ``path``."""

    def __init__(self, meta: dict, path: Path):
        self.meta, self.path = meta, path

    def fail(self, name: str, what: str, value: Any) -> None:
        raise DataFormatError(f"{self.path}: field {name!r} must be {what}, got {_shown(value)}")

    def require(self, names: tuple[str, ...]) -> None:
        missing = [k for k in names if k not in self.meta]
        if missing:
            raise DataFormatError(f"{self.path}: missing field(s) {missing}")

    def _get(self, name: str, default: Any) -> Any:
        if name in self.meta:
            return self.meta[name]
        if default is _REQUIRED:
            raise DataFormatError(f"{self.path}: missing field(s) {[name]}")
        return default

    def text(self, name: str, default: Any = _REQUIRED, empty: bool = False) -> str:
        value = self._get(name, default)
        if not isinstance(value, str) or (not empty and not value.strip()):
            self.fail(name, "a string" if empty else "a non-empty string", value)
        return value

    def integer(self, name: str, low: int, default: Any = _REQUIRED) -> int:
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= LARGEST_COUNT:
            self.fail(name, f"an integer in [{low}, {LARGEST_COUNT}]", value)
        return value

    def number(self, name: str, default: Any = _REQUIRED) -> float:
        value = self._get(name, default)
        if not _is_number(value):
            self.fail(name, "a finite number", value)
        return float(value)

    def choice(self, name: str, options: tuple[str, ...], default: str) -> str:
        value = self._get(name, default)
        if not isinstance(value, str) or value not in options:
            self.fail(name, f"one of {list(options)}", value)
        return value

    def mapping(self, name: str) -> dict:
        value = self._get(name, {})
        if not isinstance(value, dict):
            self.fail(name, "a JSON object", value)
        return dict(value)

    def layers(self, num_hidden: int) -> list[int]:
        value = self._get("layers", _REQUIRED)
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
            self.fail("layers", "a non-empty list of hidden-state indices", value)
        if not all(0 <= v < num_hidden for v in value):
            raise DataFormatError(f"{self.path}: layers {_shown(value)} outside 0..{num_hidden - 1}")
        return list(value)

    def spans(self) -> SpanPooling:
        """A span card's ``spans: {window, temperature}``."""
        value = self._get("spans", None)
        if not isinstance(value, dict) or "window" not in value:
            raise DataFormatError(f"{self.path}: a card with pool 'spans' needs a field 'spans' with a 'window'")
        window, temperature = value["window"], value.get("temperature", 0.0)
        if isinstance(window, bool) or not isinstance(window, int) or not 1 <= window <= LARGEST_COUNT:
            raise DataFormatError(f"{self.path}: field 'spans': its window must be an integer in "
                                  f"[1, {LARGEST_COUNT}], got {_shown(window)}")
        if not _is_number(temperature) or temperature < 0:
            raise DataFormatError(f"{self.path}: field 'spans': its temperature must be a finite number >= 0, "
                                  f"got {_shown(temperature)}")
        return SpanPooling(window, float(temperature))

    def combine(self) -> dict:
        """The combined verdict's weights: numbers under ``latent``, ``verbal``, ``bias``."""
        value = self.mapping("combine")
        unknown = sorted(set(value) - set(COMBINE_KEYS))
        if unknown:
            self.fail("combine", f"a JSON object of {list(COMBINE_KEYS)}", unknown)
        for key, weight in value.items():
            if not _is_number(weight):
                self.fail(f"combine.{key}", "a finite number", weight)
        return value

    def operating(self) -> dict:
        """The cross-validated operating points (``target_recall``, ``points``, ``cv``), checked as
        :mod:`.operating_point` reads them; returned as stored, so a card round-trips."""
        value = self.mapping("operating")
        if not value:
            return value
        target = value.get("target_recall")
        if target is not None and not (_is_number(target) and 0 < target <= 1):
            self.fail("operating.target_recall", "a number in (0, 1]", target)
        points = value.get("points", [])
        if not isinstance(points, list):
            self.fail("operating.points", "a list", points)
        for i, point in enumerate(points):
            where = f"operating.points[{i}]"
            if not isinstance(point, dict):
                self.fail(where, "a JSON object", point)
            for key in ("target_recall", "threshold", "recall", "false_flag_rate", "precision"):
                if key not in point and key in ("target_recall", "threshold"):
                    self.fail(f"{where}.{key}", "present", None)
                if key in point and not (_is_number(point[key]) and 0 <= point[key] <= 1):
                    self.fail(f"{where}.{key}", "a number in [0, 1]", point[key])
            if point["target_recall"] == 0:
                self.fail(f"{where}.target_recall", "a number in (0, 1]", 0)
        if "cv" in value:
            self._cv(value["cv"])
        return value

    def _cv(self, cv: Any) -> None:
        if not isinstance(cv, dict) or not all(isinstance(cv.get(k), list) for k in CV_KEYS):
            self.fail("operating.cv", f"a JSON object of lists {list(CV_KEYS)}", cv)
        lengths = {len(cv[k]) for k in CV_KEYS}
        if len(lengths) != 1 or not lengths.pop():
            self.fail("operating.cv", "three non-empty lists of one length", {k: len(cv[k]) for k in CV_KEYS})
        for key in ("latent", "verbal"):
            for v in cv[key]:
                if not (_is_number(v) and 0 <= v <= 1):
                    self.fail(f"operating.cv.{key}", "a list of scores in [0, 1]", v)
        labels = cv["aligned"]
        for v in labels:
            if type(v) is not int or v not in (0, 1):
                self.fail("operating.cv.aligned", "a list of 0 (misaligned) and 1 (aligned)", v)
        if len(set(labels)) != 2:
            self.fail("operating.cv.aligned", "labels of both kinds (recall needs misaligned answers)",
                      sorted(set(labels)))
