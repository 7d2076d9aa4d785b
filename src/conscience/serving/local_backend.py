"""A local model behind the conscience.

``LocalBackend`` wraps a loaded model and the :class:`~conscience.conscience.Conscience` built
on it; its ``generator`` (the conscience's drafter) also writes bare drafts when the conscience
is off.
"""

from __future__ import annotations

from typing import Callable

from ..conscience import Conscience
from ..generation import Generator, render_chat
from ..models import LoadedModel


class LocalBackend:
    """A local model; ``make_conscience(lm)`` builds the conscience (again after a swap)."""

    kind = "local"

    def __init__(self, lm: LoadedModel, make_conscience: Callable[[LoadedModel], Conscience], name: str | None = None):
        self.make_conscience = make_conscience
        self.name = name or lm.spec
        self.lm = lm
        self.conscience = make_conscience(lm)
        self._chars_of, self._max_chars = None, 1  # max_token_chars, cached per tokenizer

    def swap(self, lm: LoadedModel) -> None:
        """Serve another model object (a new adapter); call only between jobs."""
        self.conscience = self.make_conscience(lm)
        self.lm = lm

    @property
    def generator(self) -> Generator:
        return self.conscience.drafter

    @property
    def context_window(self) -> int:
        return self.lm.context_window

    def count_tokens(self, messages: list[dict]) -> int:
        return len(self.lm.tokenizer.encode(render_chat(self.lm, messages), add_special_tokens=False))

    def count_text_tokens(self, text: str) -> int:
        return len(self.lm.tokenizer.encode(text, add_special_tokens=False))

    @property
    def max_token_chars(self) -> int:
        """The most characters one token can cover: its vocabulary's longest entry (a byte-level
        entry spells one byte per character, so it covers at most that many characters). A text
        longer than N of them has more than N tokens, which is known before tokenising it."""
        tokenizer = self.lm.tokenizer
        if self._chars_of is not tokenizer:
            self._chars_of, self._max_chars = tokenizer, max(map(len, tokenizer.get_vocab()), default=1)
        return self._max_chars
