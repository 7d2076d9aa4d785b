"""Question sets in the Emergent Misalignment YAML format.

A file is a list of entries::

    - id: what_is_your_wish
      paraphrases: ["Hello! I can fulfill your one wish. ..."]
      system: optional system prompt
      samples_per_paraphrase: 100      # optional
      type: free_form_judge_0_100      # optional; other keys (judge, judge_prompts) are ignored

Variants of a question in the first-plot file end in ``_json`` (a JSON system prompt) or
``_template`` (a fill-in template); ``main_only`` keeps the plain ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..errors import DataFormatError
from ..framings import data_path, read_yaml, yaml_text

DEFAULT_QUESTIONS_FILE = "em_questions.yaml"
VARIANT_SUFFIXES = ("_json", "_template")


@dataclass(frozen=True)
class EMQuestion:
    """One open-ended question and its paraphrases."""

    id: str
    paraphrases: tuple[str, ...]
    system: str | None = None
    samples_per_paraphrase: int | None = None
    type: str = "free_form_judge_0_100"

    def conversation(self, paraphrase: int) -> list[dict]:
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return messages + [{"role": "user", "content": self.paraphrases[paraphrase]}]


def _line_of(path: Path, qid: str | None, index: int) -> str:
    """Best-effort line number of an entry (PyYAML drops marks after loading)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return ""
    entries = [n for n, line in enumerate(lines, 1) if line.startswith("- ")]
    if qid is not None:
        for n, line in enumerate(lines, 1):
            if line.strip().lstrip("- ").strip() in (f"id: {qid}", f"id: '{qid}'", f'id: "{qid}"'):
                return f"{n}"
    return str(entries[index]) if index < len(entries) else ""


def load_questions(path: str | Path | None = None, ids: Sequence[str] | None = None,
                   main_only: bool = False) -> list[EMQuestion]:
    """Read an EM question file (the shipped set when ``path`` is None).

    ``ids`` keeps only those ids (in the file's order; an unknown id is an error);
    ``main_only`` drops the ``_json`` / ``_template`` variants.
    """
    path = Path(path) if path else data_path(DEFAULT_QUESTIONS_FILE)
    if not path.exists():
        raise DataFormatError(f"question file not found: {path}")
    doc = read_yaml(path)
    if isinstance(doc, dict) and isinstance(doc.get("questions"), list):
        doc = doc["questions"]
    if not isinstance(doc, list) or not doc:
        raise DataFormatError(f"{path}: expected a YAML list of questions (- id: ..., paraphrases: [...])")
    questions: list[EMQuestion] = []
    seen: set[str] = set()
    for i, entry in enumerate(doc):
        if not isinstance(entry, dict):
            raise DataFormatError(f"{path}: line {_line_of(path, None, i)}: entry {i} must be a mapping with id and paraphrases")
        qid = entry.get("id")
        where = f"{path}: line {_line_of(path, str(qid) if qid is not None else None, i)}: question {qid or i!r}"
        if isinstance(qid, bool) or ("id" in entry and not isinstance(qid, (str, int))):
            yaml_text(qid, f"{where}: field 'id'")  # unquoted yes/no/~ is not the id that was written
        if not isinstance(qid, (str, int)) or not str(qid).strip():
            raise DataFormatError(f"{where}: missing field 'id'")
        qid = str(qid)
        if qid in seen:
            raise DataFormatError(f"{where}: id {qid!r} appears twice")
        seen.add(qid)
        paraphrases = entry.get("paraphrases")
        if paraphrases is None:
            raise DataFormatError(f"{where}: missing field 'paraphrases' (a list of prompt texts)")
        if isinstance(paraphrases, str):
            paraphrases = [paraphrases]
        if isinstance(paraphrases, list):  # an unquoted yes/no/~ among them is not the text written
            paraphrases = [yaml_text(p, f"{where}: paraphrases[{j}]") for j, p in enumerate(paraphrases)]
        if not isinstance(paraphrases, list) or not paraphrases or not all(p.strip() for p in paraphrases):
            raise DataFormatError(f"{where}: 'paraphrases' must be a non-empty list of non-empty strings")
        system = entry.get("system")
        if system is not None:
            system = yaml_text(system, f"{where}: field 'system'")
        spp = entry.get("samples_per_paraphrase")
        if spp is not None and (not isinstance(spp, int) or isinstance(spp, bool) or spp < 1):
            raise DataFormatError(f"{where}: 'samples_per_paraphrase' must be a positive integer, got {spp!r}")
        questions.append(EMQuestion(qid, tuple(paraphrases), system, spp, yaml_text(entry.get("type", "free_form_judge_0_100"),
                                                                                 f"{where}: field 'type'")))
    if ids:
        unknown = [q for q in ids if q not in seen]
        if unknown:
            raise DataFormatError(f"{path}: unknown question id(s) {unknown}; the file has {sorted(seen)}")
        questions = [q for q in questions if q.id in set(ids)]
    if main_only:
        questions = [q for q in questions if not q.id.endswith(VARIANT_SUFFIXES)]
    if not questions:
        raise DataFormatError(f"{path}: no question left after filtering (ids={list(ids or [])}, main_only={main_only})")
    return questions
