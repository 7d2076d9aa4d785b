"""Resumable evaluation runs: one folder per run.

``samples.jsonl`` gets one line per finished sample (flushed and fsynced), so an interrupted
run keeps what it finished; a rerun into the same folder skips every sample whose ``key`` is
already there. ``summary.json`` is replaced atomically. A folder belongs to one eval kind and
one judge: resuming with another judge is refused, so numbers from different judges never mix.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Iterable

from ..errors import ConscienceError
from ..jsonl import read_jsonl, write_json_atomic

SAMPLES = "samples.jsonl"
SUMMARY = "summary.json"
RUN_INFO = "run.json"


class RunDir:
    """One evaluation run's folder.

    Args:
        path: the folder (created if needed).
        kind: ``em``, ``code``, ``jailbreak``, ``overrefusal`` or ``discernment``.
        judge: the judge's identity string (written into every sample).
        info: what else identifies the run (model identity, settings); a resumed run must match
            it on ``kind``, ``judge`` and ``model``.
    """

    def __init__(self, path: str | Path, kind: str, judge: str, info: dict | None = None):
        self.path = Path(path)
        self.kind = kind
        self.judge = judge
        self.info = {"kind": kind, "judge": judge, **(info or {})}
        self.path.mkdir(parents=True, exist_ok=True)
        self._check_compatible()
        self._done = {s["key"] for s in self.samples()}
        write_json_atomic(self.path / RUN_INFO, self.info)

    @property
    def samples_path(self) -> Path:
        return self.path / SAMPLES

    def _check_compatible(self) -> None:
        previous = []
        for name in (RUN_INFO, SUMMARY):
            file = self.path / name
            if file.exists():
                try:
                    previous.append((file, json.loads(file.read_text(encoding="utf-8"))))
                except json.JSONDecodeError:
                    raise ConscienceError(f"{file} is not valid JSON; remove it or use another --out") from None
        for file, data in previous:
            for key in ("kind", "judge", "model"):
                old, new = data.get(key), self.info.get(key)
                if old is not None and new is not None and old != new:
                    raise ConscienceError(
                        f"{self.path} holds a run with {key} {old!r} ({file.name}), not {new!r}: numbers from "
                        "different judges or models are never merged; use another --out")
            # sampling settings must match too (the conscience arm is part of each sample's key)
            old_s = {k: v for k, v in (data.get("settings") or {}).items() if k != "conscience"}
            new_s = {k: v for k, v in (self.info.get("settings") or {}).items() if k != "conscience"}
            if old_s and new_s and old_s != new_s:
                raise ConscienceError(f"{self.path} holds a run with settings {old_s} ({file.name}), not {new_s}; "
                                      "resume with the same settings or use another --out")

    def samples(self) -> list[dict]:
        """Finished samples; a torn last line (a run killed mid-write) is skipped with a warning."""
        if not self.samples_path.exists():
            return []
        out = []
        for where, sample in read_jsonl(self.samples_path, allow_torn_tail=True):  # a torn line is redone
            if sample.get("judge") not in (None, self.judge):
                raise ConscienceError(f"{where}: judged by {sample.get('judge')!r}, "
                                      f"not {self.judge!r}; use another --out")
            out.append(sample)
        return out

    def is_done(self, key: str) -> bool:
        return key in self._done

    def todo(self, keys: Iterable[str]) -> list[str]:
        return [k for k in keys if k not in self._done]

    def append(self, samples: Iterable[dict]) -> None:
        """Append finished samples (each gets the judge identity) and make them durable."""
        self._repair_torn_tail()
        with self.samples_path.open("a", encoding="utf-8") as fh:
            for sample in samples:
                record = {**sample, "judge": self.judge}
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                self._done.add(record["key"])
            fh.flush()
            os.fsync(fh.fileno())

    def _repair_torn_tail(self) -> None:
        """A torn last line (no newline) would glue onto the next record: cut it off first."""
        path = self.samples_path
        if not path.exists() or path.stat().st_size == 0:
            return
        data = path.read_bytes()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        with path.open("r+b") as fh:
            fh.truncate(cut)

    def write_summary(self, summary: dict) -> Path:
        path = self.path / SUMMARY
        write_json_atomic(path, {**summary, "kind": self.kind, "judge": self.judge,
                                 **{k: v for k, v in self.info.items() if k not in summary}})
        return path


def progress(total: int, desc: str, initial: int = 0):
    """A tqdm bar on stderr (disabled when stderr is not a terminal and the run is short)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="sample", file=sys.stderr,
                disable=None if total > 20 else True, leave=False)


def step_of(path: str | Path, index: int) -> int:
    """The training step a checkpoint folder is named for (``checkpoint-40`` → 40), else ``index``."""
    import re

    digits = re.findall(r"\d+", Path(path).name)
    return int(digits[-1]) if digits else index
