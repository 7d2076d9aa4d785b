"""The model under evaluation answering prompts: plainly, or through its conscience step."""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, replace
from typing import Callable, Sequence

from ..generation import generate
from ..models import LoadedModel

Answerer = Callable[[Sequence[list[dict]], str], list[dict]]


@dataclass
class AnswerSettings:
    """How answers are sampled; ``conscience`` is ``"off"`` or ``"on"``."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    conscience: str = "off"


def batch_seed(seed: int, first_key: str) -> int:
    """A seed that depends only on the run seed and the batch's first sample, so a resumed
    run draws the same samples as an uninterrupted one would for that batch."""
    return (seed * 1_000_003 + zlib.crc32(first_key.encode())) % (2**31)


def make_answerer(lm: LoadedModel, settings: AnswerSettings, conscience=None) -> Answerer:
    """``answer(conversations, first_key) -> [{"answer", "new_tokens", "gen_seconds", ...}]``.

    With ``settings.conscience == "on"`` the given :class:`~conscience.conscience.Conscience`
    drafts, reviews and revises; its draft, verdict score and revision flag go into the record.
    """
    if settings.conscience == "on" and conscience is None:
        raise ValueError("conscience 'on' needs a Conscience")

    def plain(conversations: Sequence[list[dict]], first_key: str) -> list[dict]:
        gens = generate(lm, list(conversations), max_new_tokens=settings.max_new_tokens,
                        temperature=settings.temperature, top_p=settings.top_p,
                        seed=batch_seed(settings.seed, first_key))
        return [{"answer": g.answer, "text": g.text, "new_tokens": g.new_tokens, "gen_seconds": round(g.seconds, 4)}
                for g in gens]

    def with_conscience(conversations: Sequence[list[dict]], first_key: str) -> list[dict]:
        sampling = replace(conscience.sampling, seed=batch_seed(settings.seed, first_key))
        start = time.perf_counter()
        responses = conscience.respond_batch([list(c) for c in conversations], sampling)
        seconds = (time.perf_counter() - start) / max(len(conversations), 1)
        return [{
            "answer": r.final,
            "text": r.candidates[r.chosen].text,
            "new_tokens": None,
            "gen_seconds": round(seconds, 4),
            "conscience": {"draft": r.draft.answer, "draft_score": round(r.draft.verdict.score, 4),
                           "flagged": r.flagged, "revised": r.revised, "rounds": len(r.candidates) - 1},
        } for r in responses]

    return with_conscience if settings.conscience == "on" else plain
