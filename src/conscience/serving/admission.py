"""Every length a request must fit, checked before the model is touched.

A request refused after its draft was made would have cost the model's time, and one refused by
the review itself would be a failed review that ``--on-error open`` releases unchecked: a client
could choose that outcome. So each stage's prompt is measured up front, from the conversation
alone — the draft (the conversation and ``max_tokens``), the review (the review prompt the
conscience builds for this conversation, with an empty answer: its fixed cost) and, with
``--action revise``, the rewrite (the conversation, the flagged answer and the rewrite request,
then a new answer) — and a request that cannot fit one of them is a 400 naming the stage.

:func:`check_characters` is the cheap bound, run on the event loop before any tokenising: a
prompt longer in characters than ``max_prompt_tokens`` of the tokenizer's longest tokens cannot
fit. :class:`Admission` tokenises, so the app runs it on a worker thread.
"""

from __future__ import annotations

from ..conscience import revision_chat
from ..verdict import ReviewItem
from ..verdict.prompts import PromptBuilder
from ..verdict.verbal import ANSWER_ROOM
from .schemas import RequestError

# A review prompt leaving less than the reviewer's ANSWER_ROOM after its fixed part cannot be scored
# whatever the answer is (verdict/verbal.py); 8 tokens more cover an answer that re-tokenises longer
# after decoding. The serving tests pin this against the reviewer.
REVIEW_ANSWER_ROOM = ANSWER_ROOM + 8
# tokens an answer may gain in a later prompt: reasoning tags, re-tokenisation, the review's free room
ANSWER_SLACK = 16


def check_characters(messages: list[dict], max_prompt_tokens: int, max_token_chars: int) -> None:
    """Refuse a prompt that has more than ``max_prompt_tokens`` tokens by its length alone."""
    chars = sum(len(m["content"]) for m in messages)
    if chars > max_prompt_tokens * max_token_chars:
        raise RequestError(f"the prompt has {chars} characters, so more than {max_prompt_tokens} tokens (no token "
                           f"covers more than {max_token_chars} characters); this server accepts at most "
                           f"{max_prompt_tokens} tokens", "messages", "context_length_exceeded")


def verbal_readers(reviewer) -> list:
    """The reviewers inside ``reviewer`` that read a review prompt with a local judge (unwrapping the
    serving guard, latent and code-routed reviewers); none behind an API or for a scripted one."""
    found, stack = [], [reviewer]
    while stack:
        one = stack.pop()
        if (isinstance(getattr(one, "prompts", None), PromptBuilder) and getattr(one, "framings", None)
                and getattr(one, "judge", None) is not None):
            found.append(one)
            continue
        stack += [getattr(one, name) for name in ("inner", "verbal", "chat", "code") if getattr(one, name, None)]
    return found


def review_fixed_cost(reader, chat: list[dict]) -> int:
    """Tokens of ``reader``'s longest review prompt for ``chat`` with an empty answer."""
    return reader.tokens_without_answer(ReviewItem(prompt=chat[-1]["content"], answer="", messages=chat))


def _too_long(message: str) -> RequestError:
    return RequestError(message, "messages", "context_length_exceeded")


class Admission:
    """The length checks of one server (``backend`` is read at each call: an adapter swap
    replaces its conscience)."""

    def __init__(self, backend, cfg):
        self.backend, self.cfg = backend, cfg

    def check(self, messages: list[dict], max_tokens: int) -> int:
        """The prompt's token count, once every stage is known to fit; else :class:`RequestError`."""
        backend, cfg = self.backend, self.cfg
        n_prompt = backend.count_tokens(messages)
        if n_prompt > cfg.max_prompt_tokens:
            raise _too_long(f"the prompt has {n_prompt} tokens; this server accepts at most {cfg.max_prompt_tokens}")
        window = backend.context_window
        if window is None:  # an upstream applies its own limits
            return n_prompt
        conscience = backend.conscience
        chat = conscience._with_system(messages) if cfg.review else messages
        n_chat = backend.count_tokens(chat) if chat is not messages else n_prompt
        if n_chat + max_tokens > window:
            raise _too_long(f"the prompt has {n_chat} tokens; with max_tokens={max_tokens} that exceeds the model's "
                            f"context window of {window} tokens")
        if not cfg.review:
            return n_prompt
        for reader in verbal_readers(conscience.reviewer):
            fixed, judge_window = review_fixed_cost(reader, chat), reader.judge.context_window
            need = fixed + min(max_tokens + ANSWER_SLACK, REVIEW_ANSWER_ROOM)
            if need > judge_window:
                raise _too_long(f"the conscience's review of this conversation needs {fixed} tokens before the "
                                f"answer and room for the answer: that exceeds the judge's context window of "
                                f"{judge_window} tokens by {need - judge_window} (shorten the conversation)")
        if cfg.action == "revise" and conscience.max_rounds > 0:
            n_rewrite = backend.count_tokens(revision_chat(chat, "", conscience.mode))
            need = n_rewrite + 2 * max_tokens + ANSWER_SLACK
            if need > window:
                raise _too_long(f"a rewrite of a flagged answer reads the conversation and the rewrite request "
                                f"({n_rewrite} tokens), the answer and a new answer (max_tokens={max_tokens} each): "
                                f"that exceeds the model's context window of {window} tokens by {need - window} "
                                f"(lower max_tokens or shorten the conversation)")
        return n_prompt
