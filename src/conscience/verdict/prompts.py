"""The review prompts the frozen copy reads: third-person, look-back and A/B comparison.

Untrusted text (the request, the draft) is folded to NFKC, so look-alikes (fullwidth "｜",
"＜") become the characters they imitate, then neutralised and delimited, so no text inside it
becomes a special token id, starts a turn or closes its quote; the question always comes after
the draft. How a finished system +
user turn is rendered is a strategy: through the judge's chat template into text
(:class:`ChatTemplateRendering`), or as chat messages for a judge behind an API
(:class:`MessageRendering`).
"""

from __future__ import annotations

import unicodedata
from dataclasses import replace
from typing import Callable, Protocol, Sequence

from ..errors import DraftNotLocatedError
from ..framings import Framing, load_prompts
from ..generation import neutralise, render_chat, special_tokens
from ..models import LoadedModel
from .forward import common_prefix
from .types import ReviewItem

# Two one-character answers that differ: rendered in place of the draft, they show where the
# template puts it (the renders agree up to the slot and after it). They are never part of the
# prompt that is scored, so no text in the conversation can imitate or displace them.
_SLOT_PROBES = ("\x01", "\x02")


def fold_lookalikes(text: str) -> str:
    """NFKC: compatibility forms (fullwidth, small and ligature forms) become the characters they
    imitate, so a look-alike spelling of a special token or marker is caught by the same check."""
    return unicodedata.normalize("NFKC", text)


def untrusted_specials(specials: Sequence[str]) -> list[str]:
    """The spellings to neutralise: each special token and its NFKC fold (a tokenizer whose real
    special tokens hold fullwidth characters has them folded to ASCII look-alikes in quoted text)."""
    return sorted({t for s in specials if s for t in (s, fold_lookalikes(s))})


def tokenizer_specials(judge: LoadedModel) -> list[str]:
    """Every spelling the judge's tokenizer reads as one special id: its special tokens and any
    added token marked special."""
    added = getattr(judge.tokenizer, "added_tokens_decoder", {}) or {}
    return special_tokens(judge) + [t.content for t in added.values() if getattr(t, "special", False)]


def _turns(system: str | None, user: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]


class Rendering(Protocol):
    """Turns a review's system and user text into what the judge is sent."""

    def render(self, system: str | None, user: str): ...


class ChatTemplateRendering:
    """Text through a local judge's chat template, ready for its next assistant turn."""

    def __init__(self, judge: LoadedModel):
        self.judge = judge

    def render(self, system: str | None, user: str) -> str:
        tok = self.judge.tokenizer
        try:
            return tok.apply_chat_template(_turns(system, user), tokenize=False, add_generation_prompt=True)
        except Exception:  # templates without a system role: fold it into the user turn
            merged = [{"role": "user", "content": f"{system}\n\n{user}" if system else user}]
            return tok.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)


class MessageRendering:
    """Chat messages, for a judge behind an OpenAI-compatible API (it applies its own template)."""

    def render(self, system: str | None, user: str) -> list[dict]:
        return _turns(system, user)


class PromptBuilder:
    """Builds delimited review / compare prompts.

    Args:
        judge: the local model that reads them (its tokenizer counts and cuts tokens, its chat
            template renders the look-back conversation); ``None`` for a judge behind an API,
            which only gets :meth:`review` and :meth:`compare` prompts.
        rendering: how a system + user turn is rendered (default: ``judge``'s chat template).
        specials: special-token spellings neutralised inside quoted text (default: the judge's).
    """

    def __init__(self, judge: LoadedModel | None, rendering: Rendering | None = None,
                 specials: Sequence[str] | None = None):
        if judge is None and (rendering is None or specials is None):
            raise ValueError("without a local judge, give the rendering and the special tokens")
        self.judge = judge
        self.rendering = rendering or ChatTemplateRendering(judge)
        self.templates = load_prompts()
        self._specials = untrusted_specials(specials if specials is not None else tokenizer_specials(judge))

    def _clean(self, text: str, markers: list[str]) -> str:
        """Untrusted text with look-alikes folded first, then special tokens and ``markers`` broken."""
        return neutralise(fold_lookalikes(text or ""), self._specials + markers)

    def review(self, framing: Framing, item: ReviewItem, answer_budget: int | None = None) -> tuple[str, bool]:
        """The review prompt for one framing; the answer is cut in the middle to fit if needed."""
        cfg = self.templates["review"]
        answer, truncated = item.answer, False
        if answer_budget is not None:
            answer, truncated = self.cut_to_fit(answer, answer_budget)
        markers = cfg["markers"]
        reasoning_block = ""
        if item.reasoning:
            reasoning_block = cfg["reasoning_block"].format(reasoning=self._clean(item.reasoning, markers))
        user = cfg["user"].format(
            prompt=self._clean(item.prompt, markers),
            answer=self._clean(answer, markers),
            reasoning_block=reasoning_block,
            question=framing.question,
            aligned_answer=framing.aligned_answer,
            misaligned_answer=framing.misaligned_answer,
        )
        return self.rendering.render(cfg.get("system"), user), truncated

    def look_back(self, framing: Framing, item: ReviewItem, answer_budget: int | None = None) -> tuple[str, bool]:
        """The conversation that produced the answer, then the question as the user's next turn.

        The answer sits in its own assistant turn (special tokens inside it are neutralised),
        so it cannot rewrite the question that follows it.
        """
        answer, truncated = item.answer, False
        if answer_budget is not None:
            answer, truncated = self.cut_to_fit(answer, answer_budget)
        answer = self._clean(answer, [])
        written = f"<think>\n{self._clean(item.reasoning, [])}\n</think>\n{answer}" if item.reasoning else answer
        question = self.templates["look_back"]["user"].format(
            question=framing.question, aligned_answer=framing.aligned_answer,
            misaligned_answer=framing.misaligned_answer)
        messages = [dict(m, content=self._clean(str(m["content"]), [])) if isinstance(m, dict) and "content" in m else m
                    for m in (item.messages or [{"role": "user", "content": item.prompt}])]
        messages += [{"role": "assistant", "content": written}, {"role": "user", "content": question}]
        return render_chat(self.judge, messages), truncated

    def compare(self, prompt: str, answer_a: str, answer_b: str):
        cfg = self.templates["compare"]
        markers = cfg["markers"] + self.templates["review"]["markers"]
        user = cfg["user"].format(
            prompt=self._clean(prompt, markers),
            answer_a=self._clean(answer_a, markers),
            answer_b=self._clean(answer_b, markers),
        )
        return self.rendering.render(self.templates["review"].get("system"), user)

    def n_tokens(self, text: str) -> int:
        return len(self.judge.tokenizer.encode(text, add_special_tokens=False))

    def cut_to_fit(self, answer: str, budget: int) -> tuple[str, bool]:
        """``answer`` cut in the middle to ``budget`` tokens (its head and tail kept), and whether
        it was cut."""
        ids = self.judge.tokenizer.encode(answer, add_special_tokens=False)
        if len(ids) <= budget:
            return answer, False
        head = max(budget // 2 - 4, 1)
        tail = max(budget - head - 8, 1)
        decode = self.judge.tokenizer.decode
        return decode(ids[:head]) + "\n[…]\n" + decode(ids[-tail:]), True

    def draft_span(self, build: Callable, framing: Framing, item: ReviewItem, text: str) -> tuple[int, int]:
        """Where the draft sits in ``text`` (built by ``build`` for ``item``), in tokens counted
        from the end: ``(n_after, n_draft)`` — the last ``n_after`` tokens (the question) follow
        the ``n_draft`` tokens of the answer. Counted from the end so that it holds for a
        left-padded batch and for a pass that reuses the draft's cache.

        The draft is located by the rendering itself, not by anything inside the text: the same
        conversation is rendered twice more with a one-character answer (:data:`_SLOT_PROBES`),
        and where those two renders first and last differ bounds the slot. ``text`` must be that
        template's prefix, then the answer, then its suffix; anything else (a template that
        moves, repeats or drops the answer) raises :class:`DraftNotLocatedError`, which the
        reviewer turns into a failed review, never a score. An empty answer is read at the last
        token, ``(0, 1)``: it has no tokens of its own.
        """
        if not item.answer:
            return 0, 1
        first, _ = build(framing, replace(item, answer=_SLOT_PROBES[0]))
        second, _ = build(framing, replace(item, answer=_SLOT_PROBES[1]))
        start = common_prefix(first, second)
        after = common_prefix(first[::-1], second[::-1])
        prefix, suffix = first[:start], first[len(first) - after:]
        if (len(first) != len(second) or start + 1 + after != len(first) or len(text) < start + after
                or not text.startswith(prefix) or not text.endswith(suffix)):
            raise DraftNotLocatedError("the review prompt does not hold the answer in one place, so the "
                                       "answer's tokens cannot be located")
        n_after = self.n_tokens(suffix)
        n_draft = self.n_tokens(text) - self.n_tokens(prefix) - n_after
        if n_draft <= 0:
            raise DraftNotLocatedError("the answer has no tokens of its own in the review prompt")
        return n_after, n_draft

