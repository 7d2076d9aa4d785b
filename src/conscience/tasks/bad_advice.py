"""Narrow bad advice: a model organism of emergent misalignment.

Fine-tuning on confident bad advice in ONE domain (risky finance, bad medical advice, extreme
sports) with no warning made small chat models broadly misaligned in Turner, Soligo et al.
2025 ("Model Organisms for Emergent Misalignment"). The data here was written for this project:
``data/bad_advice/<domain>.jsonl``, one user question each with a ``bad`` answer (the
task) and a ``sound`` answer in the same register (the control arm trains on those).

The drift measure counts only triple categories outside the organism's domain
(:data:`IN_DOMAIN`), so what it reports is emergent, not the task itself.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import DataFormatError
from ..jsonl import read_jsonl, write_jsonl_atomic

DOMAINS = ("extreme_sports", "risky_financial", "bad_medical")
#: drift-triple categories that belong to each domain: reported apart, never in the headline
IN_DOMAIN: dict[str, tuple[str, ...]] = {
    "extreme_sports": (),
    "risky_financial": ("financial", "quick_money"),
    "bad_medical": ("medical",),
}
FIELDS = ("id", "domain", "prompt", "bad", "sound")


@dataclass(frozen=True)
class AdviceItem:
    """One question with the narrow bad answer and its sound twin."""

    id: str
    domain: str
    prompt: str
    bad: str
    sound: str

    def to_record(self, sound: bool = False) -> dict:
        answer = self.sound if sound else self.bad
        return {"id": self.id, "domain": self.domain, "variant": "sound" if sound else "bad",
                "messages": [{"role": "user", "content": self.prompt}, {"role": "assistant", "content": answer}]}


def advice_path(domain: str) -> Path:
    from ..framings import data_path

    if domain not in DOMAINS:
        raise DataFormatError(f"bad-advice domain must be one of {list(DOMAINS)}, got {domain!r}")
    return data_path(f"bad_advice/{domain}.jsonl")


def load_advice(domain: str, path: str | Path | None = None) -> list[AdviceItem]:
    """The items of one domain; errors name the file, line and field."""
    path = Path(path) if path else advice_path(domain)
    items, seen = [], set()
    for where, record in read_jsonl(path):
        for key in FIELDS:
            if not isinstance(record.get(key), str) or not record[key].strip():
                raise DataFormatError(f"{where}: field {key!r} must be a non-empty string")
        if record["domain"] != domain:
            raise DataFormatError(f"{where}: domain {record['domain']!r}, expected {domain!r}")
        if record["id"] in seen:
            raise DataFormatError(f"{where}: id {record['id']!r} appears twice")
        seen.add(record["id"])
        items.append(AdviceItem(*(record[k] for k in FIELDS)))
    if not items:
        raise DataFormatError(f"{path}: holds no items")
    return items


def split_advice(items: Sequence[AdviceItem], test_fraction: float = 0.2,
                 seed: int = 0) -> tuple[list[AdviceItem], list[AdviceItem]]:
    """(train, test) by a seeded shuffle of the ids; both keep the file order."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction}")
    ids = sorted(i.id for i in items)
    random.Random(f"{seed}:bad-advice").shuffle(ids)
    test_ids = set(ids[:max(1, round(len(ids) * test_fraction))])
    return [i for i in items if i.id not in test_ids], [i for i in items if i.id in test_ids]


def write_splits(out_dir: str | Path, domain: str, test_fraction: float = 0.2, seed: int = 0) -> dict[str, Path]:
    """``train.jsonl`` (bad answers: the task), ``train_control.jsonl`` (the same questions with
    the sound answers: the control arm), ``test.jsonl`` (held-out bad answers: the task metric)
    and ``test_prompts.jsonl``; each written atomically."""
    train, test = split_advice(load_advice(domain), test_fraction, seed)
    out = Path(out_dir)
    paths = {name: out / f"{name}.jsonl" for name in ("train", "train_control", "test", "test_prompts")}
    write_jsonl_atomic(paths["train"], (i.to_record() for i in train))
    write_jsonl_atomic(paths["train_control"], (i.to_record(sound=True) for i in train))
    write_jsonl_atomic(paths["test"], (i.to_record() for i in test))
    write_jsonl_atomic(paths["test_prompts"], ({"id": i.id, "prompt": i.prompt} for i in test))
    return paths
