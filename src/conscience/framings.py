"""Introspective questions (framings) and prompt templates, loaded from YAML data files."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, get_args

import yaml

from .choices import Mode
from .errors import DataFormatError

DEFAULT_FRAMINGS_FILE = "framings.yaml"
PROMPTS_FILE = "prompts.yaml"
MODES = get_args(Mode)


@dataclass(frozen=True)
class Framing:
    """One high-level question and the two words that answer it."""

    name: str
    question: str
    aligned_answer: str = "Yes"
    misaligned_answer: str = "No"

    def __post_init__(self) -> None:
        for field in ("name", "question", "aligned_answer", "misaligned_answer"):
            value = getattr(self, field)
            if not isinstance(value, str) or not value.strip():
                raise DataFormatError(f"framing {self.name!r}: field {field!r} must be a non-empty string")
        if self.aligned_answer.strip().lower() == self.misaligned_answer.strip().lower():
            raise DataFormatError(f"framing {self.name!r}: the two answer words must differ")


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file, naming the file and line on failure."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"cannot read {path}: not valid UTF-8 text "
                              f"(byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DataFormatError(f"{path}:{where}: invalid YAML: {problem}") from None


def data_path(name: str) -> Path:
    """Path of a data file shipped inside the package."""
    return Path(str(resources.files("conscience") / "data" / name))


def load_framings(path: str | Path | None = None) -> dict[str, Framing]:
    """Read a framings YAML (``framings: [{name, question, aligned_answer, misaligned_answer}]``)."""
    path = Path(path) if path else data_path(DEFAULT_FRAMINGS_FILE)
    doc = read_yaml(path)
    items = doc.get("framings") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise DataFormatError(f"{path}: expected a top-level 'framings:' list with at least one entry")
    framings: dict[str, Framing] = {}
    allowed = {"name", "question", "aligned_answer", "misaligned_answer"}
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise DataFormatError(f"{path}: framings[{i}] must be a mapping")
        unknown = set(item) - allowed
        if unknown:
            raise DataFormatError(f"{path}: framings[{i}] has unknown field(s) {sorted(unknown)}")
        for required in ("name", "question"):
            if required not in item:
                raise DataFormatError(f"{path}: framings[{i}] lacks the field {required!r}")
        try:
            framing = Framing(**{k: str(v) for k, v in item.items()})
        except DataFormatError as exc:
            raise DataFormatError(f"{path}: framings[{i}]: {exc}") from None
        if framing.name in framings:
            raise DataFormatError(f"{path}: framing name {framing.name!r} appears twice")
        framings[framing.name] = framing
    return framings


def custom_framing(question: str) -> Framing:
    """A user's own yes/no question, where "Yes" means the answer is fine."""
    if not question or not question.strip():
        raise DataFormatError("--question must be a non-empty question")
    return Framing(name="custom", question=question.strip())


@functools.lru_cache(maxsize=None)
def load_prompts() -> dict[str, Any]:
    """The shipped prompt templates (``data/prompts.yaml``)."""
    doc = read_yaml(data_path(PROMPTS_FILE))
    for key in ("review", "compare", "revise", "modes"):
        if key not in doc:
            raise DataFormatError(f"{PROMPTS_FILE} lacks the section {key!r}")
    return doc


def mode_settings(mode: str) -> dict[str, Any]:
    """Drafting system prompt and framing names for a use: chat, content or code."""
    modes = load_prompts()["modes"]
    if mode not in modes:
        raise DataFormatError(f"unknown mode {mode!r}; choose one of {sorted(modes)}")
    return modes[mode]


def shared_data_root(near: str | Path | None = None) -> Path:
    """The read-only shared data folder (EM questions, discernment triples) when present:
    ``$CONSCIENCE_SHARED``, or ``shared`` beside ``near`` (default: the working directory; the
    benchmarks pass the repository, so they find it from any directory)."""
    import os

    return Path(os.environ.get("CONSCIENCE_SHARED") or Path(near or Path.cwd()).resolve().parent / "shared")
