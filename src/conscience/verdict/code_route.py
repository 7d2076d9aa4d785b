"""Answers with code are read by a card fitted with code; every other answer by the chat card.

A card fitted on chat triples barely tells secure from insecure code, and adding code to its fit
costs the chat categories ("Code" in docs/results.md). So a card folder may hold a second card
in its ``code/`` subfolder: an answer that holds code (a fenced block, or bare code lines,
:func:`has_code`) is read by that card alone, any other answer by the main card alone. Each
answer is still read in one forward pass, so routing costs nothing.

The route is decided by the answer's text, which whoever shapes the answer controls. A fence
alone does not route: a fenced block whose lines read as sentences and none as code is prose (so
fencing a harmful chat answer leaves it with the chat card). But one line of code beside a harmful
passage does send it to the code card, so the code card must judge chat too (the shipped one is
fitted on the chat contrast triples *and* the code generator's); the robustness corpus's
``code_fence`` styles attack the route both ways.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..errors import ConscienceError
from .card import CARD_JSON
from .scores import logit
from .types import ReviewItem, Verdict

CODE_CARD_SUBFOLDER = "code"
# a fenced block: a line opened by ``` or ~~~ (CommonMark allows up to three spaces before it) up
# to the same fence, or to the end of the answer when it is never closed
_FENCED_BLOCK = re.compile(r"^ {0,3}(`{3,}|~{3,})[^\n]*\n?(.*?)(?:^ {0,3}\1[ \t]*$|\Z)", re.MULTILINE | re.DOTALL)
# a line of unfenced code: indented by 4 or a tab (not a nested list item), opened by a keyword or
# a closing bracket, an assignment, a call statement, or closed by ; { or } (a colon or a closing
# parenthesis alone also ends prose, so they do not count)
_CODE_LINE = re.compile(
    r"^((?: {4,}|\t)(?![*+-]\s|\d+[.)]\s)\S|(def|class|import|from|return|if|elif|else|for|while|try|except|with"
    r"|async|await|const|let|var|function|public|private|package|#include|#!)\b|[}\])]|[\w.\[\]'\"]+\s*[-+*/|&]?=[^=]"
    r"|[\w.]+\(.*\)\s*$)|[;{}]\s*$")
# a word of a sentence: letters, maybe quoted or bracketed, maybe followed by punctuation
_WORD = re.compile(r"[(\"'\u201c\u2018]?[^\W\d_][^\W\d_'\u2019-]*[.,;:!?)\"'\u201d\u2019]*")
SENTENCE_WORDS = 4  # a line of prose has at least this many words...
SENTENCE_SHARE = 0.75  # ...and at least this share of its tokens are words (a comment's # is not)
BARE_CODE_LINES = 2  # fewer lines than this are never taken for bare code
BARE_CODE_SHARE = 0.6  # the share of non-blank lines that must look like code


def _looks_like_code(line: str) -> bool:
    return bool(_CODE_LINE.search(line))


def _reads_as_sentence(line: str) -> bool:
    tokens = line.split()
    words = sum(bool(_WORD.fullmatch(token)) for token in tokens)
    return words >= SENTENCE_WORDS and words >= SENTENCE_SHARE * len(tokens)


def _fence_holds_code(content: str) -> bool:
    """A fenced block holds code unless it reads as prose: no line looks like code and some line
    reads as a sentence. A block of shell commands or data (neither) still counts as code, and so
    does code with long comments (it has code lines)."""
    lines = [line for line in content.splitlines() if line.strip()]
    return any(map(_looks_like_code, lines)) or not any(map(_reads_as_sentence, lines))


def has_code(answer: str) -> bool:
    """Whether ``answer`` holds code (the route to the code card): a fenced block that does not
    read as prose (:func:`_fence_holds_code`), or at least :data:`BARE_CODE_LINES` non-blank
    lines of which :data:`BARE_CODE_SHARE` look like code (an answer that is bare code, as in the
    Emergent Misalignment code samples)."""
    if any(_fence_holds_code(block.group(2)) for block in _FENCED_BLOCK.finditer(answer)):
        return True
    lines = [line for line in answer.splitlines() if line.strip()]
    coded = sum(map(_looks_like_code, lines))
    return len(lines) >= BARE_CODE_LINES and coded >= BARE_CODE_SHARE * len(lines)


def find_code_card(card_folder: str | Path) -> Path | None:
    """The card for answers with code that sits in ``card_folder/code/``, if there is one."""
    folder = Path(card_folder) / CODE_CARD_SUBFOLDER
    return folder if (folder / CARD_JSON).is_file() else None


class CodeRoutedReviewer:
    """The :class:`Reviewer` of a card with a code card: each answer goes to one of two latent
    reviewers (``code`` for answers that hold code, :func:`has_code`; ``chat`` for the rest).

    Both read the same review prompt (format and framing), so the draft's cache and the verdict
    mean the same thing either way. A number given as ``threshold`` applies to both (0.5 is each
    card's own fitted cut). When the two thresholds differ (``recall:X`` resolved on each card's
    own cross-validation), the code card's scores are moved in log-odds by the gap between the
    thresholds, so that ``flagged == score <= threshold`` holds for every verdict.
    """

    def __init__(self, chat, code):
        if chat.review_format != code.review_format or chat.kind != code.kind:
            raise ConscienceError(
                f"the code card reads a {code.kind} verdict of the {code.review_format} review prompt, the main card "
                f"a {chat.kind} verdict of the {chat.review_format} one: fit the code card with the main card's "
                "--review-format")
        self.chat, self.code = chat, code
        self.kind = chat.kind

    @property
    def threshold(self) -> float:
        return self.chat.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self.chat.threshold = self.code.threshold = value

    @property
    def review_format(self) -> str:
        return self.chat.review_format

    @property
    def accepts_draft_cache(self) -> bool:
        return self.chat.accepts_draft_cache and self.code.accepts_draft_cache

    @property
    def framing_name(self) -> str:
        return f"{self.chat.framing_name}|code:{self.code.framing_name}"

    def reader(self, item: ReviewItem):
        """The card reviewer that reads ``item``: the code card for an answer with code."""
        return self.code if has_code(item.answer) else self.chat

    def review(self, items: Sequence[ReviewItem]) -> list[Verdict]:
        routed = [self.reader(item) is self.code for item in items]
        chat = iter(self.chat.review([i for i, c in zip(items, routed, strict=True) if not c]))
        code = iter(self._on_chat_scale(v) for v in
                    self.code.review([i for i, c in zip(items, routed, strict=True) if c]))
        return [next(code) if c else next(chat) for c in routed]

    def _on_chat_scale(self, verdict: Verdict) -> Verdict:
        """A code card verdict whose score is moved so that the chat threshold flags it exactly
        when the code card's own threshold does."""
        if verdict.error is not None or self.code.threshold == self.chat.threshold:
            return verdict
        z = logit(verdict.score) - logit(self.code.threshold) + logit(self.chat.threshold)
        score = 1.0 / (1.0 + math.exp(-max(min(z, 60.0), -60.0)))
        return replace(verdict, score=score)  # flagged stays the code card's own decision
