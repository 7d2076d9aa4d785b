"""Preference pairs from the conscience: chosen = reviewed alternative, rejected = flagged answer.

``build_pairs`` keeps only flagged answers whose alternative beats them by a margin, and
``pairs_from_responses`` reads those rows off conscience steps (training and serving alike);
``PairBuffer`` is the bounded FIFO the trainer draws its DPO batches from; ``PairStore`` is a
durable append-only JSONL file of pairs (the server's learning mode writes one).
"""

from __future__ import annotations

import json
import math
import os
import threading
from collections import deque
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Sequence

from .errors import DataFormatError
from .jsonl import read_jsonl
from .log import warn
from .verdict import Verdict

if TYPE_CHECKING:
    from .conscience import Response

_REQUIRED = ("prompt", "chosen", "rejected", "chosen_score", "rejected_score")


@dataclass
class PreferencePair:
    """One DPO pair for a prompt, with the conscience's scores of both answers.

    ``ref_chosen_logp``/``ref_rejected_logp`` are the frozen copy's sequence log-probs of the
    two answers, cached by the trainer when the pair enters its buffer (the reference never
    changes, so a pair used twice is scored once); ``None`` means "compute when used".
    """

    prompt: str
    chosen: str
    rejected: str
    chosen_score: float
    rejected_score: float
    source: str = "online"
    ref_chosen_logp: float | None = None
    ref_rejected_logp: float | None = None

    @property
    def margin(self) -> float:
        return self.chosen_score - self.rejected_score

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, record: dict, where: str = "pair") -> "PreferencePair":
        """Build from a mapping; ``where`` (e.g. ``file:line``) prefixes every error."""
        if not isinstance(record, dict):
            raise DataFormatError(f"{where}: a pair must be a JSON object, got {type(record).__name__}")
        missing = [k for k in _REQUIRED if k not in record]
        if missing:
            raise DataFormatError(f"{where}: missing field(s) {missing}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise DataFormatError(f"{where}: unknown field(s) {unknown}")
        for key in ("prompt", "chosen", "rejected"):
            if not isinstance(record[key], str) or not record[key].strip():
                raise DataFormatError(f"{where}: field {key!r} must be a non-empty string")
        for key in ("chosen_score", "rejected_score", "ref_chosen_logp", "ref_rejected_logp"):
            value = record.get(key)
            if value is None and key.startswith("ref_"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise DataFormatError(f"{where}: field {key!r} must be a finite number, got {value!r}")
        source = record.get("source", "online")
        if not isinstance(source, str):
            raise DataFormatError(f"{where}: field 'source' must be a string")
        refs = [None if record.get(k) is None else float(record[k]) for k in ("ref_chosen_logp", "ref_rejected_logp")]
        return cls(record["prompt"], record["chosen"], record["rejected"],
                   float(record["chosen_score"]), float(record["rejected_score"]), source, *refs)

    @property
    def has_reference(self) -> bool:
        return self.ref_chosen_logp is not None and self.ref_rejected_logp is not None


def build_pairs(
    prompts: Sequence[str],
    answers: Sequence[str],
    verdicts: Sequence[Verdict],
    alternatives: Sequence[str | None],
    alternative_verdicts: Sequence[Verdict | None],
    margin: float = 0.0,
    source: str = "online",
) -> list[PreferencePair]:
    """Pairs (chosen = alternative, rejected = answer) for the flagged answers only.

    All five sequences are parallel (one row per sampled answer); rows whose answer was not
    flagged, that have no alternative, or whose alternative does not score at least
    ``margin`` above the flagged answer give no pair. An alternative identical to the answer
    teaches nothing and is skipped too, and so is an empty answer (nothing to reject).
    """
    n = len(prompts)
    if not (len(answers) == len(verdicts) == len(alternatives) == len(alternative_verdicts) == n):
        raise ValueError("build_pairs: prompts, answers, verdicts, alternatives and their verdicts "
                         "must have the same length")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    pairs = []
    rows = zip(prompts, answers, verdicts, alternatives, alternative_verdicts, strict=True)
    for prompt, answer, verdict, alt, alt_verdict in rows:
        if not verdict.flagged or alt is None or alt_verdict is None:
            continue
        if not alt.strip() or not answer.strip() or alt.strip() == answer.strip():
            continue
        if alt_verdict.score - verdict.score < margin:
            continue
        pairs.append(PreferencePair(prompt, alt, answer, float(alt_verdict.score), float(verdict.score), source))
    return pairs


def pairs_from_responses(responses: Sequence[Response | None], margin: float = 0.0,
                         source: str = "online") -> list[PreferencePair]:
    """The pairs of conscience steps (:class:`~conscience.conscience.Response`): chosen = the best
    reviewed alternative (the first of equals), rejected = the flagged draft, kept by
    :func:`build_pairs`' rules. ``None`` entries and unrevised responses give none."""
    rows = [r for r in responses if r is not None and len(r.candidates) > 1]
    best = [max(r.candidates[1:], key=lambda c: c.verdict.score) for r in rows]
    return build_pairs([r.prompt for r in rows], [r.draft.answer for r in rows], [r.draft.verdict for r in rows],
                       [b.answer for b in best], [b.verdict for b in best], margin=margin, source=source)


class PairBuffer:
    """Bounded FIFO of pairs for the DPO term; the oldest pairs fall out when it is full.

    ``take(n)`` returns up to ``n`` of the oldest pairs; each pair is served ``uses`` times
    (re-queued at the back after each use) before it leaves the buffer.
    """

    def __init__(self, capacity: int = 256, uses: int = 1):
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if uses < 1:
            raise ValueError(f"uses must be >= 1, got {uses}")
        self.capacity = capacity
        self.uses = uses
        self._items: deque[tuple[PreferencePair, int]] = deque(maxlen=capacity)
        self.added = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def add(self, pairs: Iterable[PreferencePair]) -> None:
        for pair in pairs:
            if len(self._items) == self.capacity:
                self.dropped += 1
            self._items.append((pair, self.uses))
            self.added += 1

    def take(self, n: int) -> list[PreferencePair]:
        out = []
        for _ in range(min(n, len(self._items))):
            pair, left = self._items.popleft()
            out.append(pair)
            if left > 1:
                self._items.append((pair, left - 1))
        return out

    def peek(self) -> list[PreferencePair]:
        """Every pair in the buffer, oldest first, without using any of them up."""
        return [pair for pair, _ in self._items]

    def state_dict(self) -> dict:
        """Everything needed to resume exactly (written into checkpoints as JSON)."""
        return {"capacity": self.capacity, "uses": self.uses, "added": self.added, "dropped": self.dropped,
                "items": [{"pair": p.to_dict(), "left": left} for p, left in self._items]}

    def load_state_dict(self, state: dict) -> None:
        self.capacity, self.uses = int(state["capacity"]), int(state["uses"])
        self.added, self.dropped = int(state["added"]), int(state["dropped"])
        self._items = deque(((PreferencePair.from_dict(i["pair"], "buffer state"), int(i["left"])) for i in state["items"]),
                            maxlen=self.capacity)


class PairStore:
    """A durable append-only JSONL file of pairs.

    Every ``append`` writes one line, flushes and fsyncs, so a crash loses at most the line
    being written; ``load`` then skips that torn last line with a warning. A malformed line
    anywhere else is an error naming the file and line.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, pair: PreferencePair) -> None:
        self.extend([pair])

    def extend(self, pairs: Iterable[PreferencePair]) -> None:
        lines = "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs)
        if not lines:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            self._cut_torn_tail()
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(lines)
                fh.flush()
                os.fsync(fh.fileno())

    def _cut_torn_tail(self) -> None:
        """Drop an interrupted last line (no newline) before appending, so it never ends up
        in the middle of the file where it would read as corruption."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        with open(self.path, "r+b") as fh:
            data = fh.read()
            if data.endswith(b"\n"):
                return
            keep = data.rfind(b"\n") + 1
            warn(f"{self.path}: dropping a torn last line (an interrupted write)")
            fh.truncate(keep)
            fh.flush()
            os.fsync(fh.fileno())

    def load(self) -> list[PreferencePair]:
        if not self.path.exists():
            return []
        return [PreferencePair.from_dict(record, where) for where, record in read_jsonl(self.path, allow_torn_tail=True)]

    def __len__(self) -> int:
        return len(self.load())
