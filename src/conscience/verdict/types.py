"""What the conscience reads and what it returns: review items, verdicts, the reviewer protocol."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Protocol, Sequence, get_args

from ..choices import ReviewFormat
from ..generation import PrefixCache

REVIEW_FORMATS = get_args(ReviewFormat)
# Hidden states handed to the latent verdict: the review prompt's last token, the mean over
# the draft's tokens inside the review prompt, or every draft token's state for a span card to
# pool (same forward pass either way).
POOLS = ("last", "answer", "spans")


@dataclass
class ReviewItem:
    """What the conscience reads: the user's request, the draft's reasoning and its answer.

    ``messages`` is the conversation that produced the answer (default: the prompt alone); the
    look-back format replays it. ``cache`` is the draft's key/value cache, reused when the
    judge has the same weights as the writer.
    """

    prompt: str
    answer: str
    reasoning: str | None = None
    messages: list[dict] | None = None
    cache: PrefixCache | None = field(default=None, repr=False, compare=False)


@dataclass
class Verdict:
    """The conscience's judgement of one answer.

    ``score`` in [0, 1] is the probability that the answer is aligned; ``flagged`` is
    ``score <= threshold`` (see :func:`is_flagged`). ``logprobs`` holds, per framing, the raw
    log-probabilities of the aligned and misaligned answer words (summed over their spelling
    variants). ``error`` is set when the review itself failed (it raised or timed out): such a
    verdict is never flagged (no revision starts) and never counts as a pass either.
    """

    score: float
    flagged: bool
    framing: str
    kind: str = "verbal"
    per_framing: dict[str, float] = field(default_factory=dict)
    logprobs: dict[str, dict[str, float]] = field(default_factory=dict)
    truncated: bool = False
    seconds: float = 0.0
    error: str | None = None

    @classmethod
    def failed(cls, framing: str, error: str) -> Verdict:
        """The verdict of a review that raised or timed out."""
        return cls(score=0.0, flagged=False, framing=framing, kind="failed", error=error)

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.error is None:  # a completed review's dict is what it always was
            del data["error"]
        return data


class Reviewer(Protocol):
    """Anything that turns review items into verdicts (verbal, latent, combined, upstream).

    ``framing_name`` names the question(s) asked, for reports; ``review_format`` is the review
    prompt read (one of :data:`REVIEW_FORMATS`); ``accepts_draft_cache`` says whether the
    draft's key/value cache may be handed over in :attr:`ReviewItem.cache` (a look-back prompt
    read by the same weights, in the caller's thread).
    """

    kind: str
    threshold: float

    @property
    def framing_name(self) -> str: ...

    @property
    def review_format(self) -> str: ...

    @property
    def accepts_draft_cache(self) -> bool: ...

    def review(self, items: Sequence[ReviewItem]) -> list[Verdict]: ...


def is_flagged(score: float, threshold: float) -> bool:
    """A score at the threshold is flagged: the threshold is the highest score still not
    trusted, so a review that cannot tell (0.5 against 0.5) never passes a draft."""
    return not score > threshold
