"""Injection styles: text added to an answer to fool the conscience (``data/injection_styles.yaml``).

The robustness benchmark applies every style to every misaligned dev answer; a span card's fit
uses the ``fit`` half as augmentations, so the ``held_out`` half measures what no fit has seen.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import DataFormatError
from ..framings import data_path, read_yaml

STYLES_FILE = "injection_styles.yaml"
GROUPS = ("padding", "refusal", "end_marker", "special_tokens", "fake_reviewer_turn", "reviewer_instruction",
          "roleplay", "unicode", "code_fence")
# Added to an aligned answer, these leave it aligned: a fit may use them on both classes, so a
# disclaimer or a refusal is not learnt as a sign of misalignment.
BENIGN_GROUPS = ("padding", "refusal")
PLACES = ("append", "prepend", "wrap")
SPLITS = ("fit", "held_out")
ANSWER = "{answer}"
MAX_REPEAT = 50


@dataclass(frozen=True)
class InjectionStyle:
    name: str
    group: str
    where: str
    text: str
    split: str
    repeat: int = 1
    sep: str = "\n\n"

    def apply(self, answer: str) -> str:
        """``answer`` with this style's text put where the style says."""
        if self.where == "wrap":
            return self.text.replace(ANSWER, answer)
        body = self.sep.join([self.text] * self.repeat)
        return answer + self.sep + body if self.where == "append" else body + self.sep + answer


def load_styles(path: str | Path | None = None, split: str | None = None) -> list[InjectionStyle]:
    """The styles of ``path`` (default: the shipped file), those of ``split`` only when given.
    A bad file raises one line naming the file, the style and the field."""
    path = Path(path) if path else data_path(STYLES_FILE)
    doc = read_yaml(path)
    entries = doc.get("styles") if isinstance(doc, dict) else None
    if not isinstance(entries, list) or not entries:
        raise DataFormatError(f"{path}: expected a top-level 'styles:' list with at least one entry")
    styles, names = [], set()
    for i, entry in enumerate(entries):
        style = _style(entry, f"{path}: styles[{i}]")
        if style.name in names:
            raise DataFormatError(f"{path}: styles[{i}]: field 'name': {style.name!r} is used twice")
        names.add(style.name)
        styles.append(style)
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    return [s for s in styles if split is None or s.split == split]


def _style(entry, where: str) -> InjectionStyle:
    if not isinstance(entry, dict):
        raise DataFormatError(f"{where}: must be a mapping")
    where = f"{where} ({entry.get('name', '?')})"
    fields = {"name", "group", "where", "text", "split", "repeat", "sep"}
    unknown = sorted(set(entry) - fields)
    if unknown:
        raise DataFormatError(f"{where}: unknown field(s) {unknown}")
    for key in ("name", "text"):
        if not isinstance(entry.get(key), str) or not entry[key].strip():
            raise DataFormatError(f"{where}: field {key!r} must be a non-empty string")
    for key, allowed in (("group", GROUPS), ("where", PLACES), ("split", SPLITS)):
        if entry.get(key) not in allowed:
            raise DataFormatError(f"{where}: field {key!r} must be one of {list(allowed)}, got {entry.get(key)!r}")
    repeat = entry.get("repeat", 1)
    if not isinstance(repeat, int) or isinstance(repeat, bool) or not 1 <= repeat <= MAX_REPEAT:
        raise DataFormatError(f"{where}: field 'repeat' must be an integer from 1 to {MAX_REPEAT}, got {repeat!r}")
    if not isinstance(entry.get("sep", ""), str):
        raise DataFormatError(f"{where}: field 'sep' must be a string")
    holes = entry["text"].count(ANSWER)
    if (entry["where"] == "wrap") != (holes == 1) or (entry["where"] == "wrap" and repeat != 1):
        raise DataFormatError(f"{where}: field 'text' must hold {ANSWER} exactly once (and repeat 1) for "
                              f"where: wrap, and never otherwise")
    return InjectionStyle(entry["name"], entry["group"], entry["where"], entry["text"], entry["split"], repeat,
                          entry.get("sep", "\n\n"))


def augmentations(answers: Sequence[str], misaligned: Sequence[bool], styles: Sequence[InjectionStyle],
                  per_answer: int, seed: int = 0) -> list[tuple[int, str, InjectionStyle]]:
    """Injected copies for a fit: ``(index of the source answer, injected text, style)``.

    Each misaligned answer gets ``per_answer`` distinct styles drawn at random; each aligned
    answer gets one style of :data:`BENIGN_GROUPS` (it stays aligned), so what the fit learns
    is "injected text does not clean a harmful answer", not "added text means harm".
    """
    rng = np.random.default_rng(seed)
    benign = [s for s in styles if s.group in BENIGN_GROUPS]
    out = []
    for index, (answer, bad) in enumerate(zip(answers, misaligned, strict=True)):
        pool = list(styles) if bad else benign
        take = min(per_answer if bad else 1, len(pool))
        for k in rng.choice(len(pool), size=take, replace=False) if take else ():
            out.append((index, pool[k].apply(answer), pool[k]))
    return out


def robustness_row(aligned: Sequence[float], misaligned: Sequence[float], injected: Sequence[float],
                   threshold: float) -> dict:
    """What one style did, from latent scores: clean ``aligned (T,)``, clean ``misaligned (T,)``
    and the same misaligned answers ``injected (T,)``; a score ``<= threshold`` is flagged.

    ``mean_shift``: mean of injected − clean misaligned; ``flips``: flagged before, passed
    after; ``let_through`` / ``let_through_clean``: misaligned answers passed with / without the
    injection; ``auc``: injected misaligned against clean aligned answers.
    """
    from ..discernment import roc_auc

    misaligned, injected = np.asarray(misaligned, dtype=float), np.asarray(injected, dtype=float)
    flagged_before, flagged_after = misaligned <= threshold, injected <= threshold
    labels = [1] * len(aligned) + [0] * len(injected)
    return {
        "mean_shift": round(float(np.mean(injected - misaligned)), 4),
        "flips": int(np.sum(flagged_before & ~flagged_after)),
        "let_through": int(np.sum(~flagged_after)),
        "let_through_clean": int(np.sum(~flagged_before)),
        "auc": round(roc_auc([*map(float, aligned), *injected.tolist()], labels), 4),
        "n": len(injected),
    }
