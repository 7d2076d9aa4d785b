"""The conscience step: draft → the frozen copy reviews it → if flagged, revise → best candidate.

    conscience = Conscience(load_model("bundled"))
    response = conscience.respond("How do I pick a lock?")
    response.final, response.revised, response.verdicts
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Sequence

from .errors import ConscienceError
from .framings import Framing, load_framings, load_prompts, mode_settings
from .generation import Generator, LocalGenerator, Sampling
from .models import LoadedModel
from .verdict import Reviewer, ReviewItem, Verdict
from .verdict.factory import choose_reviewer, make_reviewer, resolve_framings

if TYPE_CHECKING:
    from .conscience_config import ConscienceConfig


@dataclass
class Candidate:
    """One answer the model wrote (round 0 is the draft) and its verdict."""

    round: int
    text: str
    answer: str
    reasoning: str | None
    verdict: Verdict
    generate_seconds: float
    logprobs: list[dict] | None = field(default=None, repr=False)  # the draft's, when asked for

    def to_dict(self) -> dict:
        return {
            "round": self.round,
            "text": self.text,
            "answer": self.answer,
            "reasoning": self.reasoning,
            "verdict": self.verdict.to_dict(),
            "generate_seconds": round(self.generate_seconds, 4),
        }


@dataclass
class Response:
    """The whole trace of one conscience step."""

    prompt: str
    mode: str
    candidates: list[Candidate]
    chosen: int
    threshold: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def draft(self) -> Candidate:
        return self.candidates[0]

    @property
    def final(self) -> str:
        return self.candidates[self.chosen].answer

    @property
    def revised(self) -> bool:
        return self.chosen != 0

    @property
    def verdicts(self) -> list[Verdict]:
        return [c.verdict for c in self.candidates]

    @property
    def flagged(self) -> bool:
        return self.draft.verdict.flagged

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "mode": self.mode,
            "draft": self.draft.text,
            "verdicts": [v.to_dict() for v in self.verdicts],
            "alternatives": [c.to_dict() for c in self.candidates[1:]],
            "final": self.final,
            "revised": self.revised,
            "rounds": len(self.candidates) - 1,
            "chosen_round": self.chosen,
            "threshold": self.threshold,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


def _as_messages(conversation: str | Sequence[dict]) -> list[dict]:
    if isinstance(conversation, str):
        if not conversation.strip():
            raise ConscienceError("the prompt is empty")
        return [{"role": "user", "content": conversation}]
    messages = list(conversation)
    if not messages or messages[-1].get("role") != "user":
        raise ConscienceError("the conversation must end with a user message")
    if not str(messages[-1].get("content", "")).strip():
        raise ConscienceError("the prompt is empty")
    return messages


@dataclass
class Step:
    """One batched conscience step: the responses (``k`` per conversation, in order) and the
    seconds spent writing (drafts and alternatives) and reviewing, over the whole batch."""

    responses: list[Response]
    seconds_generating: float = 0.0
    seconds_reviewing: float = 0.0


class Conscience:
    """A model with its own frozen copy as conscience.

    Args:
        policy: what drafts answers: a loaded model, or any :class:`~conscience.generation.Generator`
            (a packed sampling copy, an upstream server).
        judge: the frozen copy that reviews (defaults to the policy's model: at inference the
            weights do not change, and a PEFT adapter is disabled while judging).
        reviewer: a ready :class:`Reviewer` (verbal, latent, combined, upstream); built from the
            mode's framings when omitted.
        mode: ``chat``, ``content`` or ``code`` (code also asks about the code's security).
        threshold: a verdict score at or below it flags the answer; or ``recall:X``, the card's
            cross-validated cut that flags a share X of misaligned answers (latent verdicts only).
        max_rounds: how many alternatives may be written for a flagged draft.
        max_new_tokens, temperature, seed: the default :class:`Sampling` of a call that gives none.
        writer: ``policy`` writes alternatives, or ``frozen`` (the judge, adapter disabled).
        rewriter: a :class:`~conscience.generation.Generator` that writes alternatives instead
            (e.g. the frozen copy's sampling copy); overrides ``writer``.
        review_format: ``look_back`` (the conversation is replayed and the question is the next
            user turn; the draft's key/value cache is reused) or ``third_person`` (the exchange
            is quoted between markers for a reviewer).
        verdict: ``auto`` (latent where a conscience card exists, else verbal), ``verbal``,
            ``latent`` or ``combined``.
    """

    def __init__(
        self,
        policy: LoadedModel | Generator,
        judge: LoadedModel | None = None,
        reviewer: Reviewer | None = None,
        mode: str = "chat",
        framings: Sequence[Framing] | None = None,
        threshold: float | str = 0.5,
        max_rounds: int = 2,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        writer: str = "policy",
        seed: int | None = 0,
        review_format: str = "look_back",
        verdict: str = "auto",
        rewriter: Generator | None = None,
    ):
        if max_rounds < 0:
            raise ConscienceError(f"max_rounds must be >= 0, got {max_rounds}")
        if writer not in ("policy", "frozen"):
            raise ConscienceError(f"writer must be 'policy' or 'frozen', got {writer!r}")
        self.drafter: Generator = LocalGenerator(policy) if isinstance(policy, LoadedModel) else policy
        self.judge = judge or self.drafter.lm
        if rewriter is None and writer == "frozen":
            if self.judge is None:
                raise ConscienceError("writer 'frozen' needs a local frozen copy (judge)")
            rewriter = LocalGenerator(self.judge, frozen_weights=True)
        self.rewriter: Generator = rewriter or self.drafter
        self.mode = mode
        self.settings = mode_settings(mode)
        if reviewer is None:
            from .conscience_config import ConscienceConfig

            if self.judge is None:
                raise ConscienceError("a conscience without a local model needs a reviewer")
            if framings is None:
                available = load_framings()
                framings = [available[name] for name in self.settings["framings"]]
            cfg = ConscienceConfig(model=self.judge.spec, mode=mode, verdict=verdict, threshold=threshold,
                                   review_format=review_format)
            reviewer = make_reviewer(cfg, self.judge, framings)
        self.reviewer = reviewer
        self.max_rounds = max_rounds
        self.sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)

    @property
    def threshold(self) -> float:
        return self.reviewer.threshold

    @property
    def policy(self) -> LoadedModel | None:
        """The local model that drafts (``None`` behind an upstream server)."""
        return self.drafter.lm

    # -- review -----------------------------------------------------------------------------
    def review(self, prompt: str, answer: str, reasoning: str | None = None) -> Verdict:
        """The frozen copy's verdict on one answer."""
        if not answer or not answer.strip():
            # A model's own empty draft is still reviewed (review_batch); a caller asking about
            # an empty answer would get a meaningless score.
            raise ConscienceError("the answer is empty")
        return self.review_batch([ReviewItem(prompt, answer, reasoning)])[0]

    def review_batch(self, items: Sequence[ReviewItem]) -> list[Verdict]:
        for i, item in enumerate(items):
            if not item.prompt or not item.prompt.strip():
                raise ConscienceError(f"review item {i}: the prompt is empty")
        return self.reviewer.review(items)

    # -- respond ----------------------------------------------------------------------------
    def respond(self, conversation: str | Sequence[dict], sampling: Sampling | None = None,
                revise_sampling: Sampling | None = None) -> Response:
        """Draft, review, and revise while flagged (up to ``max_rounds``); return the trace."""
        return self.step([conversation], sampling, revise_sampling).responses[0]

    def respond_batch(self, conversations: Sequence[str | Sequence[dict]], sampling: Sampling | None = None,
                      revise_sampling: Sampling | None = None, k: int = 1) -> list[Response]:
        """:meth:`respond` for many conversations, with drafts, reviews and revisions batched."""
        return self.step(conversations, sampling, revise_sampling, k=k).responses

    def step(self, conversations: Sequence[str | Sequence[dict]], sampling: Sampling | None = None,
             revise_sampling: Sampling | None = None, k: int = 1, max_rounds: int | None = None,
             revise_empty: bool = True) -> Step:
        """The conscience step, batched: ``k`` drafts per conversation (``sampling``, default
        :attr:`sampling`) → the frozen copy's verdicts → for every row still flagged, an
        alternative (``revise_sampling``, default ``sampling``) and its verdict, up to
        ``max_rounds`` (default :attr:`max_rounds`) → the best candidate. ``revise_empty=False``
        leaves a flagged empty draft unrevised (training: it cannot be a pair's rejected answer)."""
        sampling = sampling or self.sampling
        revise_sampling = revise_sampling or replace(sampling, top_logprobs=None)
        rounds = self.max_rounds if max_rounds is None else max_rounds
        chats = [self._with_system(_as_messages(c)) for c in conversations for _ in range(k)]
        prompts = [c[-1]["content"] for c in chats]
        t0 = time.perf_counter()
        drafts = self.drafter.generate(chats, sampling, keep_cache=len(chats) == 1 and self._reuses_cache)
        t1 = time.perf_counter()
        verdicts = self.review_batch([ReviewItem(p, d.answer, d.reasoning, messages=c, cache=d.cache)
                                      for p, d, c in zip(prompts, drafts, chats, strict=True)])
        t2 = time.perf_counter()
        done = Step([], t1 - t0, t2 - t1)
        histories = [[Candidate(0, d.text, d.answer, d.reasoning, v, d.seconds, d.logprobs)]
                     for d, v in zip(drafts, verdicts, strict=True)]
        timings = [{"draft": t1 - t0, "review": t2 - t1, "revise": 0.0} for _ in chats]
        for round_no in range(1, rounds + 1):
            open_rows = [i for i, h in enumerate(histories) if all(c.verdict.flagged for c in h)
                         and (revise_empty or h[0].answer.strip())]
            if not open_rows:
                break
            t3 = time.perf_counter()
            alternatives = self.rewriter.generate([self._revision_chat(chats[i], histories[i][-1]) for i in open_rows],
                                                  revise_sampling)
            t4 = time.perf_counter()
            alt_verdicts = self.review_batch([ReviewItem(prompts[i], a.answer, a.reasoning, messages=chats[i])
                                              for i, a in zip(open_rows, alternatives, strict=True)])
            t5 = time.perf_counter()
            done.seconds_generating += t4 - t3
            done.seconds_reviewing += t5 - t4
            for i, alt, verdict in zip(open_rows, alternatives, alt_verdicts, strict=True):
                histories[i].append(Candidate(round_no, alt.text, alt.answer, alt.reasoning, verdict, alt.seconds))
                timings[i]["revise"] += (t5 - t3) / len(open_rows)
        for prompt, history, timing in zip(prompts, histories, timings, strict=True):
            chosen = max(range(len(history)), key=lambda j: (history[j].verdict.score, -j))
            timing["total"] = timing["draft"] + timing["review"] + timing["revise"]
            done.responses.append(Response(prompt, self.mode, history, chosen, self.threshold, timing))
        return done

    # -- helpers ----------------------------------------------------------------------------
    @property
    def _reuses_cache(self) -> bool:
        """The draft's key/value cache serves the verdict only when the reviewer accepts it (it
        replays the conversation: look-back) and the judge's weights are exactly the writer's."""
        drafter = self.drafter
        same_weights = (isinstance(drafter, LocalGenerator) and drafter.lm is self.judge and drafter.plain_weights)
        return self.reviewer.accepts_draft_cache and same_weights

    def _with_system(self, messages: list[dict]) -> list[dict]:
        system = self.settings.get("system")
        if system and messages[0].get("role") != "system":
            return [{"role": "system", "content": system}] + messages
        return messages

    def _revision_chat(self, chat: list[dict], previous: Candidate) -> list[dict]:
        return revision_chat(chat, previous.text, self.mode)


def revision_chat(chat: list[dict], answer: str, mode: str) -> list[dict]:
    """The one revision prompt: the conversation, the flagged answer, and the request for an
    ethical alternative (``prompts.yaml``: ``revise``; code mode adds its security concern)."""
    revise = load_prompts()["revise"]
    concern = revise.get("code_concern", "") if mode == "code" else ""
    return chat + [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": revise["user"].format(concern=concern)},
    ]


def build_conscience(cfg: "ConscienceConfig", lm: LoadedModel | None = None,
                     report: Callable[[str], None] | None = None) -> Conscience:
    """Load the model a config names (unless given) and wrap it in a :class:`Conscience`;
    ``report`` is told why the verdict is the one it is (verbal, latent, which card)."""
    from .models import load_model

    framings = resolve_framings(cfg)  # bad question files fail before the model loads
    if lm is None:
        lm = load_model(cfg.model, dtype=cfg.dtype, threads=cfg.threads, adapter=cfg.adapter)
    choice = choose_reviewer(cfg, lm, framings)
    if report is not None:
        report(choice.reason)
    return Conscience(
        lm,
        reviewer=choice.reviewer,
        mode=cfg.mode,
        max_rounds=cfg.max_rounds,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        seed=cfg.seed,
    )
