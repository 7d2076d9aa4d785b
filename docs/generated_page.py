"""The one way a generated documentation page is written or checked (the generators beside this
file import it): written atomically, so mkdocs never reads a half-written page; with ``--check``,
compared with what is on disk instead."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def page_arguments(description: str, out: Path, argv: list[str] | None) -> argparse.Namespace:
    """The generators' shared command line: ``--check`` and ``--out`` (default ``out``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--check", action="store_true", help="exit 1 if the written page is out of date")
    parser.add_argument("--out", type=Path, default=out)
    return parser.parse_args(argv)


def write_or_check(text: str, out: Path, check: bool, script: str, counted: str) -> int:
    """Write ``text`` to ``out`` (exit status 0), or with ``check`` return 1 when ``out`` differs;
    ``script`` names the generator in the message, ``counted`` what the summary line counts."""
    if check:
        current = out.read_text(encoding="utf-8") if out.exists() else ""
        if current != text:
            print(f"{Path(script).stem}: {out} is out of date: run python docs/{Path(script).name}", file=sys.stderr)
            return 1
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    print(f"wrote {out} ({counted})")
    return 0
