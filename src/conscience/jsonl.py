"""Reading JSON Lines files with errors that name the file and line; writing JSON atomically."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import DataFormatError


def read_jsonl(path: str | Path, allow_torn_tail: bool = False) -> Iterator[tuple[str, dict]]:
    """Yield ``("file:line", record)`` for each non-blank line, each one a JSON object.

    ``allow_torn_tail`` skips (with a warning) an unparsable last line without a newline: the
    trace of an interrupted append, in files written one line at a time.
    """
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    lines = raw.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if allow_torn_tail and number == len(lines) and not raw.endswith("\n"):
                print(f"[conscience] warning: {where}: skipping a torn last line (an interrupted write)",
                      file=sys.stderr)
                continue
            raise DataFormatError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
        except ValueError as exc:  # an integer past int()'s digit limit (sys.get_int_max_str_digits())
            # the message's advice after ';' (raise the limit in Python) is no use to the file's author
            raise DataFormatError(f"{where}: invalid JSON: {str(exc).split(';')[0]}") from None
        except RecursionError:  # arrays or objects nested deeper than the parser's recursion limit
            raise DataFormatError(f"{where}: invalid JSON: nested too deeply") from None
        if not isinstance(record, dict):
            raise DataFormatError(f"{where}: each line must be a JSON object")
        yield where, record


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over ``path``: a reader
    sees the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_jsonl_atomic(path: str | Path, records: Iterable[dict]) -> None:
    """Write one JSON object a line, atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for record in records:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
