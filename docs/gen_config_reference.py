"""Write the configuration reference (docs/reference/config.md) from the config dataclasses.

Every field of each config in ``CONFIGS`` becomes a row: its key, type, default, the values it
accepts (``bounded(...)`` bounds, ``Literal`` choices, a ``parsed(...)`` field's parser) and the
docstring written under it. The types, defaults and bounds are read from the dataclasses
themselves; the docstrings under the fields, which Python does not keep, from the source with
``ast``. A field without a docstring is an error, so a new key cannot go undocumented.

    python docs/gen_config_reference.py            # writes docs/reference/config.md
    python docs/gen_config_reference.py --check    # exit 1 if that file is not what it would write

The configs are found by class name anywhere under ``src/conscience``, so a config that moves to
another module is still found. CI runs this before ``mkdocs build --strict``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import sys
import typing
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "conscience"
PACKAGE_NAME = "conscience"
OUT = ROOT / "docs" / "reference" / "config.md"
if str(ROOT / "src") not in sys.path:  # the working tree's code, installed or not
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "docs"))
from generated_page import page_arguments, write_or_check  # noqa: E402

# (class name, where it is used): the order of the page
CONFIGS = (
    ("ConscienceConfig", "the conscience itself: `conscience ask`, `review`, `eval`, and nested as `conscience:` "
                         "in the configs below"),
    ("TrainConfig", "`conscience train` (YAML + `key=value` overrides), and the `train:` mapping of an experiment"),
    ("ServeConfig", "`conscience serve` (`--config FILE`, flags, `--set key=value`)"),
    ("ExperimentConfig", "`conscience experiment` (a preset, `--config FILE`, flags, `--set key=value`)"),
)


class ReferenceError(Exception):
    """A config cannot be documented (not found, or a field without a docstring)."""


@dataclass
class FieldDoc:
    name: str
    type: str
    default: str
    allowed: str
    doc: str | None


def find_class(name: str) -> tuple[str, ast.ClassDef]:
    """The dotted module and the ``ast`` node of the one class ``name`` under src/conscience."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                parts = (PACKAGE_NAME,) + path.relative_to(PACKAGE).with_suffix("").parts
                module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
                found.append((module, node))
    if len(found) != 1:
        raise ReferenceError(f"{name}: expected one class of that name under {PACKAGE}, found {len(found)}")
    return found[0]


def field_docstrings(node: ast.ClassDef) -> dict[str, str | None]:
    """Each annotated field of a class body, with the string literal right under it (None if none)."""
    docs: dict[str, str | None] = {}
    body = node.body
    for i, stmt in enumerate(body):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            nxt = body[i + 1] if i + 1 < len(body) else None
            is_doc = (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                      and isinstance(nxt.value.value, str))
            docs[stmt.target.id] = " ".join(nxt.value.value.split()) if is_doc else None
    return docs


def annotations(node: ast.ClassDef) -> dict[str, str]:
    """Each field's annotation as written in the source (``Dtype``, ``int | None``)."""
    return {s.target.id: ast.unparse(s.annotation) for s in node.body
            if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}


def _literal_options(annotation: typing.Any) -> tuple | None:
    if typing.get_origin(annotation) is typing.Literal:
        return typing.get_args(annotation)
    for option in typing.get_args(annotation):
        found = _literal_options(option)
        if found is not None:
            return found
    return None


def _code(value: typing.Any) -> str:
    """A value as it is written in YAML or on the command line: text bare, anything else as Python."""
    text = value if isinstance(value, str) else repr(value)
    return f"`{text}`".replace("|", "\\|")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if dataclasses.is_dataclass(value):
        return f"its own defaults ([{type(value).__name__}](#{type(value).__name__.lower()}))"
    if isinstance(value, tuple):
        value = list(value)
    return _code(value)


def _allowed(f: dataclasses.Field, hint: typing.Any) -> str:
    bounds = f.metadata.get("bounds")
    if bounds is not None:
        text = bounds.describe().removeprefix("be ").replace("lie in ", "")
        return f"`{text}`".replace(" or ", "` or `") + (" or `None`" if f.default is None else "")
    parse = f.metadata.get("parse")
    if parse is not None:  # the parser's docstring says what it takes: "A ...: <values>, the ..."
        summary = " ".join((parse.__doc__ or "").split()).split(". ")[0]
        summary = summary.split(": ", 1)[-1].split(", the ")[0].replace("``", "`")
        return f"{summary} (`{parse.__name__}`)"
    options = _literal_options(hint)
    if options is not None:
        return ", ".join(_code(o) for o in options)
    return ""


def describe(name: str) -> tuple[str, str, list[FieldDoc]]:
    """Module, class docstring and one FieldDoc per field of config class ``name``."""
    module_name, node = find_class(name)
    cls = getattr(importlib.import_module(module_name), name)
    docs, written = field_docstrings(node), annotations(node)
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        nested = dataclasses.is_dataclass(hints[f.name])
        fields.append(FieldDoc(
            name=f.name, type=f"[{hints[f.name].__name__}](#{hints[f.name].__name__.lower()})" if nested
            else " or ".join(f"`{part}`" for part in written.get(f.name, str(hints[f.name])).split(" | ")),
            default=_default(f), allowed=_allowed(f, hints[f.name]), doc=docs.get(f.name)))
    return module_name, " ".join((cls.__doc__ or "").split("\n\n")[0].split()), fields


def undocumented() -> list[str]:
    """``Config.key`` for every field of the configs that has no docstring under it."""
    return [f"{name}.{f.name}" for name, _ in CONFIGS for f in describe(name)[2] if not f.doc]


def render() -> str:
    missing = undocumented()
    if missing:
        raise ReferenceError(f"{len(missing)} config field(s) have no docstring under them: {', '.join(missing)}")
    lines = ["# Configuration reference", "",
             "<!-- Generated by docs/gen_config_reference.py from the config dataclasses: edit the docstring "
             "under a field, not this page. -->", "",
             "Every key of every config, with its type, default, the values it accepts and the docstring "
             "under the field in the source. A YAML file, `key=value` overrides and Python all go through "
             "the same dataclass, so a value outside these bounds is refused, in one line naming the key, "
             "before any model loads. A nested config is a mapping in YAML and dotted keys as overrides "
             "(`conscience.threshold=0.4`).", ""]
    for name, used_by in CONFIGS:
        module, summary, fields = describe(name)
        lines += [f"## {name}", "", f"`{module}.{name}` — {used_by}.", "", summary, "",
                  "| key | type | default | accepts | description |", "|---|---|---|---|---|"]
        lines += [f"| `{f.name}` | {f.type} | {f.default} | {f.allowed} | {f.doc.replace('|', chr(92) + '|')} |"
                  for f in fields]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = page_arguments(__doc__.splitlines()[0], OUT, argv)
    try:
        text = render()
    except ReferenceError as exc:
        print(f"gen_config_reference: error: {exc}", file=sys.stderr)
        return 1
    return write_or_check(text, args.out, args.check, __file__, f"{text.count(chr(10) + '| `')} keys")

if __name__ == "__main__":
    sys.exit(main())
