"""Reading evaluation prompts from CSV or JSONL files, with the column named by the caller.

Chat JSONL (``{"messages": [...]}``, as the code-hacking generator writes) gives the
conversation up to its last user turn; any other JSONL or CSV gives one user prompt per row.
"""

from __future__ import annotations

import csv
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataFormatError
from ..jsonl import read_jsonl


@dataclass
class PromptRecord:
    """One evaluation prompt: its id, the conversation to answer, and the row's other fields."""

    id: str
    messages: list[dict]
    meta: dict = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.messages[-1]["content"]


def _row_id(index: int, text: str) -> str:
    """An id for a row without one; the text's digest keeps a resumed run from matching a
    sample to a different prompt if the file was edited."""
    return f"row{index}-{zlib.crc32(text.encode()):08x}"


def _from_messages(messages, where: str) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise DataFormatError(f"{where}: 'messages' must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataFormatError(f"{where}: every message needs 'role' and 'content'")
    last_user = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last_user is None or not str(messages[last_user]["content"]).strip():
        raise DataFormatError(f"{where}: no non-empty user message")
    return [{"role": m["role"], "content": str(m["content"])} for m in messages[: last_user + 1]]


def read_prompts(path: str | Path, column: str = "prompt", id_column: str = "id", limit: int | None = None) -> list[PromptRecord]:
    """Prompts from a ``.csv`` or ``.jsonl`` file.

    ``column`` names the prompt field (a chat JSONL row with ``messages`` needs none). A file
    without that column, a row with an empty prompt, or malformed JSON is an error naming the
    file, line and field.
    """
    path = Path(path)
    if not path.exists():
        raise DataFormatError(f"prompt file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = _read_csv(path, column, id_column)
    elif suffix in (".jsonl", ".json"):
        records = _read_jsonl(path, column, id_column)
    else:
        raise DataFormatError(f"{path}: prompt files must be .csv or .jsonl")
    if not records:
        raise DataFormatError(f"{path}: no prompts in the file")
    return records[:limit] if limit else records


def _read_csv(path: Path, column: str, id_column: str) -> list[PromptRecord]:
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if column not in header:
            raise DataFormatError(f"{path}: line 1: no column {column!r}; the columns are {header} "
                                  "(choose one with --column)")
        records = []
        for row in reader:
            line = reader.line_num
            text = (row.get(column) or "").strip()
            if not text:
                raise DataFormatError(f"{path}: line {line}: column {column!r} is empty")
            rid = str(row.get(id_column) or _row_id(len(records), text))
            meta = {k: v for k, v in row.items() if k not in (column,) and k is not None}
            records.append(PromptRecord(rid, [{"role": "user", "content": text}], meta))
    return records


def _read_jsonl(path: Path, column: str, id_column: str) -> list[PromptRecord]:
    records = []
    for where, row in read_jsonl(path):
        if "messages" in row:
            messages = _from_messages(row["messages"], where)
        elif column in row:
            text = str(row[column] or "").strip()
            if not text:
                raise DataFormatError(f"{where}: field {column!r} is empty")
            messages = [{"role": "user", "content": text}]
        else:
            raise DataFormatError(f"{where}: no field {column!r} and no 'messages'; the fields are {sorted(row)} "
                                  "(choose one with --column)")
        rid = str(row.get(id_column) or _row_id(len(records), messages[-1]["content"]))
        meta = {k: v for k, v in row.items() if k not in ("messages", column)}
        records.append(PromptRecord(rid, messages, meta))
    return records
