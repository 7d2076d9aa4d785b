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


# Nodes that YAML aliases may add when expanded, over those written out. Anchors and aliases
# that share a block a few times stay far below it; an alias bomb (each level aliasing the one
# below ten times) passes it within a few hundred bytes and is refused before it is built.
MAX_ALIAS_EXPANSION = 100_000


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a document whose aliases expand past
    :data:`MAX_ALIAS_EXPANSION` nodes, or refer to themselves, before constructing anything.
    (Constructed aliases share one Python object, so the bomb goes off later, in whatever walks
    the value: ``str()``, a copy, a merge.)"""

    def compose_document(self):
        node = super().compose_document()
        if node is not None:
            _check_expansion(node)
        return node


def _check_expansion(root: yaml.Node) -> None:
    """Count the nodes of ``root`` with every alias expanded, once per distinct node (memoised,
    iterative: linear in the document, whatever it expands to)."""
    size: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.ScalarNode):
            size[key] = 1
            continue
        children = ([part for pair in node.value for part in pair] if isinstance(node, yaml.MappingNode)
                    else list(node.value))
        if children_done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            continue
        if key in size:
            continue
        if key in on_path:
            raise yaml.YAMLError("an alias refers to a node that contains it (a recursive structure)")
        on_path.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                raise yaml.YAMLError("an alias refers to a node that contains it (a recursive structure)")
            if id(child) not in size:
                stack.append((child, False))
    if size[id(root)] - len(size) > MAX_ALIAS_EXPANSION:
        raise yaml.YAMLError(f"aliases expand the document by more than {MAX_ALIAS_EXPANSION:,} nodes "
                             "(an alias bomb?); write the repeated values out")


def load_yaml(text: str) -> Any:
    """Parse YAML text: safe types only, aliases bounded (:data:`MAX_ALIAS_EXPANSION`). Every
    YAML the project reads goes through here; errors are ``yaml.YAMLError`` (callers name the
    source: :func:`read_yaml` for files)."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file (safe types only, aliases bounded), naming the file and line on failure."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise DataFormatError(f"cannot read {path}: not valid UTF-8 text "
                              f"(byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f": line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise DataFormatError(f"{path}{where}: invalid YAML: {problem}") from None
    except RecursionError:  # the composer and constructor recurse once per level of nesting
        raise DataFormatError(f"{path}: invalid YAML: nested too deeply") from None
    except ValueError as exc:  # the parser's own limits, e.g. an integer of more than 4,300 digits
        raise DataFormatError(f"{path}: invalid YAML: {str(exc).split(';')[0].splitlines()[0]}") from None


def yaml_text(value: Any, where: str) -> str:
    """``value`` if it is a string; else an error naming ``where`` (``file: key``). YAML reads an
    unquoted ``yes``/``no``/``on``/``off`` as a boolean, ``~`` as null and ``0x10`` as 16, so a
    ``str()`` of them is not what was written: the author quotes the value instead."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        hint = f"got {str(value).lower()}: an unquoted yes, no, on, off, true or false is a boolean in YAML"
    elif value is None:
        hint = "got null: an unquoted ~, null or nothing at all is null in YAML"
    elif isinstance(value, (int, float)):
        hint = f"got the number {value!r}"
    else:
        hint = f"got a {type(value).__name__}"
    raise DataFormatError(f"{where} must be text ({hint}; quote it)")


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
        fields = {k: yaml_text(v, f"{path}: framings[{i}].{k}") for k, v in item.items()}
        try:
            framing = Framing(**fields)
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
