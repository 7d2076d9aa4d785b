"""Reading JSON Lines files with errors that name the file and line; writing files atomically
(text, JSON, JSON Lines: the one atomic write of the package)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

from .errors import DataFormatError
from .log import warn

# The longest line read_jsonl accepts, in bytes. A real record (a prompt and its answers, a
# preference pair, a monitor point) is kilobytes; the text of a whole 128k-token context is about
# 0.5 MB. Past this bound a line is refused at once, naming it, instead of minutes and gigabytes
# of parsing (a 50 MB line took 83 s and 9.7 GB).
MAX_LINE_BYTES = 8 * 2**20
# a \uD800-\uDFFF escape, the only way a surrogate gets into decoded JSON text (strict UTF-8
# decoding refuses encoded ones); a cheap test on the raw text before walking the parsed value
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(text: str, where: str) -> Any:
    """``json.loads`` with every failure a :class:`DataFormatError` naming ``where`` (``file:line``),
    and strict: a lone surrogate escape (``"\\ud800"``, which Python decodes into a string that
    cannot be encoded or tokenised) is refused here, not found later as a traceback."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    except ValueError as exc:  # an integer past int()'s digit limit (sys.get_int_max_str_digits())
        # the message's advice after ';' (raise the limit in Python) is no use to the file's author
        raise DataFormatError(f"{where}: invalid JSON: {str(exc).split(';')[0]}") from None
    except RecursionError:  # arrays or objects nested deeper than the parser's recursion limit
        raise DataFormatError(f"{where}: invalid JSON: nested too deeply") from None
    if _SURROGATE_ESCAPE.search(text):
        _refuse_surrogates(value, where)
    return value


def _refuse_surrogates(value: Any, where: str) -> None:
    """Walk a parsed JSON value (iteratively: it may be nested as deeply as the parser allows)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise DataFormatError(f"{where}: invalid JSON: a lone surrogate escape (\\u{ord(item[exc.start]):04x}) "
                                      "in a string; text must be valid Unicode") from None


def read_jsonl(path: str | Path, allow_torn_tail: bool = False,
               max_line_bytes: int | None = None) -> Iterator[tuple[str, dict]]:
    """Yield ``("file:line", record)`` for each non-blank line, each one a JSON object.

    The file is read a line at a time, and no line past ``max_line_bytes`` is read whole. Lines
    are decoded strictly (UTF-8, then :func:`parse_json`). ``allow_torn_tail`` skips (with a
    warning) an unparsable last line without a newline: the trace of an interrupted append, in
    files written one line at a time.
    """
    path = Path(path)
    max_line_bytes = max_line_bytes or MAX_LINE_BYTES  # read now, not at import: one bound for every reader
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed below; a generator holds it between records
    except OSError as exc:
        raise DataFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
    with fh:
        number = 0
        while True:
            try:
                raw = fh.readline(max_line_bytes + 1)
            except OSError as exc:
                raise DataFormatError(f"cannot read {path}: {exc.strerror or exc}") from None
            if not raw:
                return
            number += 1
            where = f"{path}:{number}"
            terminated = raw.endswith(b"\n")
            if not terminated and len(raw) > max_line_bytes:
                raise DataFormatError(f"{where}: line longer than {max_line_bytes:,} bytes, far beyond any record "
                                      "(is this JSON Lines, one record a line?)")
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataFormatError(f"cannot read {where}: not valid UTF-8 text "
                                      f"(byte 0x{raw[exc.start]:02x} at column {exc.start + 1})") from None
            if not line.strip():
                continue
            try:
                record = parse_json(line, where)
            except DataFormatError:
                if allow_torn_tail and not terminated:  # the last line, cut short by a kill
                    warn(f"{where}: skipping a torn last line (an interrupted write)")
                    return
                raise
            if not isinstance(record, dict):
                raise DataFormatError(f"{where}: each line must be a JSON object")
            yield where, record


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file in ``path``'s folder for writing; on success it is flushed, fsynced
    and renamed over ``path``, so a reader sees the old file or the new one, never half of one.
    On any error the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_folder(path: str | Path, keep_existing: bool = False) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill (a model's weights and tokenizer); on success it
    is swapped in for ``path`` (an old folder is moved aside, then removed), so an interrupted
    write never leaves half a folder under ``path``. With ``keep_existing``, a ``path`` that
    exists by then (another process finished first) is kept and the new folder dropped."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        if path.exists() and keep_existing:
            shutil.rmtree(tmp)
            return
        old = None
        if path.exists():
            old = path.with_name(path.name + ".old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically: see :func:`atomic_file`."""
    with atomic_file(path) as fh:
        fh.write(text)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON (indented, UTF-8) atomically: see :func:`atomic_file`."""
    with atomic_file(path) as fh:
        json.dump(data, fh, ensure_ascii=False, indent=2)


def write_jsonl_atomic(path: str | Path, records: Iterable[dict]) -> None:
    """Write one JSON object a line, atomically: see :func:`atomic_file`."""
    with atomic_file(path) as fh:
        for record in records:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


def append_jsonl_durable(path: str | Path, record: dict) -> None:
    """Append one JSON line and fsync it: a line written is a line kept, whatever kills the process
    next (read it back with ``read_jsonl(..., allow_torn_tail=True)``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_jsonl_records(path: str | Path) -> list[dict]:
    """The records of a file appended line by line (none if it does not exist; a torn last line,
    the trace of a kill during an append, is skipped with a warning)."""
    return [record for _, record in read_jsonl(path, allow_torn_tail=True)] if Path(path).exists() else []
