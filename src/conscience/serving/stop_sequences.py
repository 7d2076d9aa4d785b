"""A request's ``stop`` sequences, applied to every answer the model writes *before* it is reviewed.

The cut must come first: the conscience judges exactly the text that may be released, so a
harmful beginning cannot pass on the strength of a tail that the stop sequence removes. The
model still writes to its end (HF ``generate`` and an upstream both do), and the text is cut at
the earliest stop sequence, which is left out, as OpenAI does.
"""

from __future__ import annotations

import copy

from ..generation import Generation, split_reasoning


def cut_at_stops(text: str, stops: tuple[str, ...]) -> tuple[str, int | None]:
    """``text`` up to its earliest stop sequence, and where it was cut (None: not cut)."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    if not hits:
        return text, None
    at = min(hits)
    return text[:at], at


def _cut_logprobs(entries: list[dict], stops: tuple[str, ...]) -> list[dict]:
    """The log-prob entries of the tokens that start before the earliest stop sequence."""
    joined = "".join(str(e.get("token", "")) for e in entries)
    _, at = cut_at_stops(joined, stops)
    if at is None:
        return entries
    kept, start = [], 0
    for entry in entries:
        if start >= at:
            break
        kept.append(entry)
        start += len(str(entry.get("token", "")))
    return kept


class StopAtSequences:
    """A :class:`~conscience.generation.Generator` whose answers end before any of ``stops``."""

    def __init__(self, inner, stops: tuple[str, ...]):
        self.inner, self.stops = inner, stops
        self.lm = inner.lm

    def generate(self, chats, sampling, keep_cache: bool = False) -> list[Generation]:
        out = []
        for gen in self.inner.generate(chats, sampling, keep_cache):
            text, at = cut_at_stops(gen.text, self.stops)
            if at is None:
                out.append(gen)
                continue
            text = text.rstrip()
            reasoning, answer = split_reasoning(text)
            logprobs = _cut_logprobs(gen.logprobs, self.stops) if gen.logprobs is not None else None
            # the key/value cache covers the tokens past the cut: it no longer matches the text
            out.append(Generation(text, answer, reasoning, gen.new_tokens, gen.seconds, None, logprobs))
        return out


def with_stops(conscience, stops: tuple[str, ...]):
    """A shallow copy of ``conscience`` whose drafts and rewrites end before ``stops`` (the
    shared conscience is left as it is: other requests run on it at the same time)."""
    cut = copy.copy(conscience)
    cut.drafter = StopAtSequences(conscience.drafter, stops)
    cut.rewriter = StopAtSequences(conscience.rewriter, stops)
    return cut
