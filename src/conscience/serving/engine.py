"""The worker that runs the model: batches concurrent requests, guards the review, decides.

Torch code is synchronous, so one worker thread owns the model and the web loop only waits on
futures (``/health`` and ``/metrics`` stay responsive). Requests that arrive together are
drafted and reviewed as one batch; a request that breaks a batch is answered alone, so one
request's error never reaches another. Each review runs under a timeout in its own thread; a
review that raises or overruns yields a failed verdict (``Verdict.error`` set), and the decision then follows
``on_error`` — ``closed`` never releases such a draft. An overrunning review is abandoned, not
waited on: an upstream's next reviews run beside it; a local model is still busy with it, so
under ``closed`` the requests that arrive meanwhile are answered at once as failed checks.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..conscience import Candidate, Response
from ..errors import ConscienceError
from ..verdict import ReviewItem, Verdict, is_flagged
from ..verdict.upstream import UpstreamError
from .config import ServeConfig
from .metrics import Metrics
from .redact import redact

WITHHELD_CHECK_FAILED = ("The conscience check of this answer failed, so the answer was withheld. "
                         "Please try again later.")
WITHHELD_BLOCKED = "This answer was withheld: the model's conscience flagged it."
WITHHELD_UNRESOLVED = ("This answer was withheld: the model's conscience flagged it and every rewritten "
                       "alternative too.")


class GuardedReviewer:
    """Runs an inner reviewer in its own thread with a timeout; failures become failed verdicts.

    A failed verdict is never flagged (so no revision loop starts) but never counted as safe
    either: the decision treats it as a failed check.

    ``shares_model``: the reviewer runs on the serving model (local), so at most one review runs
    at a time and one that overran keeps the model :attr:`busy` until it ends. Otherwise
    (upstream: HTTP calls) reviews may overlap and an overrunning one is simply left behind.
    """

    def __init__(self, inner, timeout: float, metrics: Metrics | None = None, shares_model: bool = True):
        self.inner = inner
        self.timeout = timeout
        self.metrics = metrics
        self.shares_model = shares_model
        self.kind = inner.kind
        self._pool = ThreadPoolExecutor(max_workers=1 if shares_model else 8, thread_name_prefix="review")
        self._pending: Future | None = None

    @property
    def busy(self) -> bool:
        """A review that overran its timeout is still running on the shared model."""
        return self.shares_model and self._pending is not None and not self._pending.done()

    @property
    def threshold(self) -> float:
        return self.inner.threshold

    @property
    def framing_name(self) -> str:
        return self.inner.framing_name

    @property
    def review_format(self) -> str:
        return self.inner.review_format

    @property
    def accepts_draft_cache(self) -> bool:
        """Never: a review runs in the guard's own thread and may be abandoned past its
        timeout, so it must not share the draft's key/value cache."""
        return False

    def wait_idle(self) -> None:
        """Block until an overrun review has finished: it still uses the model."""
        pending = self._pending
        if pending is not None:
            try:
                pending.exception()
            except Exception:
                pass
            self._pending = None

    def _failed(self, n: int, error: str) -> list[Verdict]:
        error = redact(error)
        print(f"[conscience] review failed: {error}", file=sys.stderr, flush=True)
        if self.metrics:
            self.metrics.inc("conscience_checker_failures_total", n)
        return [Verdict.failed(self.framing_name, error) for _ in range(n)]

    def review(self, items: Sequence[ReviewItem]) -> list[Verdict]:
        if self.busy:  # the revision loop of a batch whose earlier review overran
            return self._failed(len(items), "an earlier review is still running past its timeout")
        future = self._pool.submit(self.inner.review, list(items))
        try:
            verdicts = future.result(timeout=self.timeout)
        except FutureTimeout:
            future.cancel()  # still queued behind other overrunning reviews: never starts
            self._pending = future
            return self._failed(len(items), f"the review exceeded its {self.timeout:g}s timeout")
        except Exception as exc:  # any failure of the checker is a failed check, never a pass
            return self._failed(len(items), f"{exc.__class__.__name__}: {exc}")
        if len(verdicts) != len(items) or not all(math.isfinite(v.score) and 0 <= v.score <= 1 for v in verdicts):
            return self._failed(len(items), "the reviewer returned malformed verdicts")
        for v in verdicts:  # one threshold rule for every reviewer: a score at the threshold is flagged
            v.flagged = v.flagged or is_flagged(v.score, self.threshold)
        return verdicts


@dataclass
class Outcome:
    """What the client gets: the released text and the conscience's annotation."""

    content: str
    finish_reason: str
    status: str  # ok | flagged | revised | blocked | unresolved | check_failed | unchecked | off
    conscience: dict | None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list | None = None
    response: Response | None = None


def _candidate_view(c: Candidate) -> dict:
    v = c.verdict
    return {"round": c.round, "answer": c.answer, "score": None if v.error is not None else round(v.score, 4),
            "flagged": v.flagged, "checked": v.error is None}


def decide(response: Response, cfg: ServeConfig) -> tuple[str, str, str, dict]:
    """``(content, finish_reason, status, conscience annotation)`` for one reviewed request."""
    draft = response.draft
    failed = [c for c in response.candidates if c.verdict.error is not None]
    checked = [c for c in response.candidates if c.verdict.error is None]
    note: dict[str, Any] = {  # the wire key stays "mode" (clients read it); it holds the serve action
        "status": "checked", "mode": cfg.action, "framing": draft.verdict.framing, "kind": draft.verdict.kind,
        "score": None if draft.verdict.error is not None else round(draft.verdict.score, 4),
        "flagged": draft.verdict.flagged, "threshold": response.threshold, "revised": False,
        "rounds": len(response.candidates) - 1,
    }
    if failed:
        note["error"] = failed[0].verdict.error
    if failed and (cfg.on_error == "closed" or not checked):
        if cfg.on_error == "closed":
            note["status"] = "check_failed"
            return WITHHELD_CHECK_FAILED, "content_filter", "check_failed", note
        note["status"] = "unchecked"  # open: the draft goes out, marked unchecked
        return draft.answer, "stop", "unchecked", note
    if cfg.action == "monitor":
        return draft.answer, "stop", "flagged" if draft.verdict.flagged else "ok", note
    if cfg.action == "block":
        if draft.verdict.flagged:
            return WITHHELD_BLOCKED, "content_filter", "blocked", note
        return draft.answer, "stop", "ok", note
    best = max(checked, key=lambda c: (c.verdict.score, -c.round))
    note.update(revised=best.round != 0, final_score=round(best.verdict.score, 4), final_flagged=best.verdict.flagged,
                unresolved=best.verdict.flagged)
    if best.verdict.flagged:  # every candidate stayed flagged: never released as if it were fine
        note["status"] = "unresolved"
        note["explanation"] = (f"every candidate was flagged: the best scored {best.verdict.score:.4f}, at or below "
                               f"the threshold {response.threshold:g}, after {len(response.candidates) - 1} "
                               f"rewrite(s)")
        if cfg.on_unresolved == "block":
            note["revised"] = False
            return WITHHELD_UNRESOLVED, "content_filter", "unresolved", note
        return best.answer, "stop", "unresolved", note
    status = "revised" if best.round != 0 else "ok"
    return best.answer, "stop", status, note


@dataclass
class Job:
    messages: list[dict]
    max_tokens: int
    temperature: float
    top_logprobs: int | None = None
    future: Future = field(default_factory=Future)
    call: Callable[[], Any] | None = None  # an exclusive task (e.g. an adapter swap) instead

    @property
    def key(self) -> tuple:
        return (self.max_tokens, self.temperature, self.top_logprobs)


class Engine:
    """One worker thread that owns the model; :meth:`submit` returns a future per request."""

    def __init__(self, backend, cfg: ServeConfig, metrics: Metrics, learner=None):
        self.backend, self.cfg, self.metrics, self.learner = backend, cfg, metrics, learner
        self.queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._guard: GuardedReviewer | None = None

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="conscience-worker", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Fail the requests still queued (the server is going away), then end the worker."""
        while True:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if job is not None and not job.future.done():
                job.future.set_exception(ConscienceError("the server is shutting down"))
        if self._thread is not None:
            self.queue.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def pending(self) -> int:
        return self.queue.qsize()

    def alive(self) -> bool:
        """The worker thread is running (a server whose worker died answers nothing)."""
        return self._thread is not None and self._thread.is_alive()

    # -- submission -----------------------------------------------------------------------------
    def submit(self, messages: list[dict], max_tokens: int, temperature: float, top_logprobs: int | None = None) -> Future:
        job = Job(messages, max_tokens, temperature, top_logprobs)
        self.queue.put(job)
        return job.future

    def run_exclusive(self, call: Callable[[], Any]) -> Future:
        """Run ``call`` on the worker between batches (nothing else touches the model then)."""
        job = Job([], 0, 0.0, call=call)
        self.queue.put(job)
        return job.future

    # -- worker ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            job = self.queue.get()
            if job is None:
                return
            batch = [job]
            while job.call is None and len(batch) < self.cfg.max_batch:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None or nxt.call is not None:
                    self.queue.put(nxt)  # handled on the next turn, after this batch
                    break
                batch.append(nxt)
            batch = [j for j in batch if j.future.set_running_or_notify_cancel()]  # drop abandoned requests
            if not batch:
                continue
            if job.call is not None:
                if self._guard is not None:
                    self._guard.wait_idle()  # a swap must not change the model under a running review
                self._settle([job], lambda job=job: [job.call()])
                continue
            if self._guard is not None and self._guard.busy:
                if self.cfg.on_error == "closed":  # answered at once under fail-closed, never queued behind it
                    for j in batch:
                        j.future.set_result(self._busy_outcome(j))
                    continue
                self._guard.wait_idle()  # open: the draft to release needs the model
            groups: dict[tuple, list[Job]] = {}
            for j in batch:
                groups.setdefault(j.key, []).append(j)
            for jobs in groups.values():
                self._settle(jobs, lambda jobs=jobs: self._run(jobs))

    def _settle(self, jobs: list[Job], work: Callable[[], list]) -> None:
        try:
            results = work()
        except Exception as exc:
            # Errors are per request: rerun each alone, so only the one that broke the batch
            # fails. An upstream that is down fails everyone alike, and is not asked N times more.
            if len(jobs) > 1 and not isinstance(exc, UpstreamError):
                for j in jobs:
                    self._settle([j], lambda j=j: self._run([j]))
                return
            for j in jobs:
                j.future.set_exception(exc)
            return
        for j, result in zip(jobs, results, strict=True):
            j.future.set_result(result)

    def _guarded(self):
        conscience = self.backend.conscience
        if not isinstance(conscience.reviewer, GuardedReviewer):
            if self._guard is not None:
                self._guard.wait_idle()
            conscience.reviewer = GuardedReviewer(conscience.reviewer, self.cfg.review_timeout, self.metrics,
                                                  shares_model=self.backend.kind == "local")
        self._guard = conscience.reviewer
        return conscience

    def _busy_outcome(self, job: Job) -> Outcome:
        """A request that arrived while a local review overran: not drafted, withheld (closed)."""
        error = "the conscience is still busy with a review that overran its timeout"
        print(f"[conscience] review failed: {error}", file=sys.stderr, flush=True)
        self.metrics.inc("conscience_checker_failures_total")
        note = {"status": "check_failed", "mode": self.cfg.action, "framing": self._guard.framing_name,
                "kind": "failed", "score": None, "flagged": False, "threshold": self._guard.threshold,
                "revised": False, "rounds": 0, "error": error}
        return Outcome(WITHHELD_CHECK_FAILED, "content_filter", "check_failed", note,
                       self.backend.count_tokens(job.messages), self.backend.count_text_tokens(WITHHELD_CHECK_FAILED))

    def _run(self, jobs: list[Job]) -> list[Outcome]:
        chats = [j.messages for j in jobs]
        max_tokens, temperature, top = jobs[0].key
        if not self.cfg.conscience:
            drafts = self.backend.draft(chats, max_tokens, temperature, top)
            return [Outcome(d.generation.answer, "stop", "off", None, self.backend.count_tokens(c),
                            d.generation.new_tokens, d.logprobs) for c, d in zip(chats, drafts, strict=True)]
        conscience = self._guarded()
        conscience.max_new_tokens, conscience.temperature = max_tokens, temperature
        if top is not None:
            responses = self._monitor_with_logprobs(conscience, chats, max_tokens, temperature, top)
        else:
            responses = conscience.respond_batch(chats)
        outcomes = []
        for chat, response in zip(chats, responses, strict=True):
            content, finish, status, note = decide(response, self.cfg)
            if self.cfg.expose_trace and finish != "content_filter":  # withheld stays withheld
                note["draft"] = response.draft.answer
                note["draft_verdict"] = _candidate_view(response.draft)
                note["alternatives"] = [_candidate_view(c) for c in response.candidates[1:]]
            logprobs = getattr(response, "draft_logprobs", None) if status in ("ok", "flagged") else None
            outcomes.append(Outcome(content, finish, status, note, self.backend.count_tokens(chat),
                                    self.backend.count_text_tokens(content), logprobs, response))
        if self.learner is not None:
            try:
                self.learner.observe([o.response for o in outcomes if o.status in ("revised", "unresolved")])
            except Exception as exc:  # learning must never break serving
                print(f"[conscience] learning: could not record pairs: {exc}", file=sys.stderr, flush=True)
        return outcomes

    def _monitor_with_logprobs(self, conscience, chats, max_tokens, temperature, top) -> list[Response]:
        """The monitor action releases the draft itself, so its log-probs describe the answer: draft
        with log-probs, then review (no revision)."""
        drafts = self.backend.draft(chats, max_tokens, temperature, top)
        prompts = [c[-1]["content"] for c in chats]
        verdicts = conscience.review_batch([ReviewItem(p, d.generation.answer, d.generation.reasoning)
                                            for p, d in zip(prompts, drafts, strict=True)])
        responses = []
        for prompt, d, verdict in zip(prompts, drafts, verdicts, strict=True):
            g = d.generation
            response = Response(prompt, conscience.mode, [Candidate(0, g.text, g.answer, g.reasoning, verdict, g.seconds)],
                                0, conscience.threshold)
            response.draft_logprobs = d.logprobs  # type: ignore[attr-defined]
            responses.append(response)
        return responses
