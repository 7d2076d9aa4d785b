"""The one way a generated documentation page is written or checked (the generators beside this
file import it): written atomically, so mkdocs never reads a half-written page; with ``--check``,
compared with what is on disk instead."""

from __future__ import annotations

import sys
from pathlib import Path


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
