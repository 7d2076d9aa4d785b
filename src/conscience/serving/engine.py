"""The worker that runs the model: batches concurrent requests, guards the review, decides.

Torch code is synchronous, so one worker thread owns the model and the web loop only waits on
futures (``/health`` and ``/metrics`` stay responsive). Requests that arrive together are
drafted and reviewed as one batch; a request that breaks a batch is answered alone, so one
request's error never reaches another. Each review runs under a timeout in its own thread; a
review that raises or overruns yields a failed verdict (``Verdict.error`` set), and the decision then follows
``on_error`` — ``closed`` never releases such a draft. An overrunning review is abandoned, not
waited on: an upstream's next reviews run beside it; a local model is still busy with it, so
under ``closed`` the requests that arrive meanwhile are answered at once as failed checks.

Requests wait in a bounded :class:`~.job_queue.JobQueue` (``max_queue``; past it ``submit``
raises :class:`~.job_queue.QueueFull`); a request whose client went away is taken out of it at
once (:meth:`Engine.abandon`) and never runs.

In front of an upstream nothing is batched here: the upstream batches for itself, so each request
is drafted and reviewed on its own thread, up to ``upstream_concurrency`` at once, and a review
that overruns delays only its own request (answered at its timeout), never the ones beside it.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from ..conscience import Candidate, Response
from ..errors import ConscienceError
from ..log import log
from ..verdict.upstream import UpstreamError
from .config import ServeConfig
from .job_queue import JobQueue
from .metrics import Metrics
from .review_guard import OVERRUNS_PER_SLOT, GuardedReviewer
from .stop_sequences import StopAtSequences, with_stops

WITHHELD_CHECK_FAILED = ("The conscience check of this answer failed, so the answer was withheld. "
                         "Please try again later.")
WITHHELD_BLOCKED = "This answer was withheld: the model's conscience flagged it."
WITHHELD_UNRESOLVED = ("This answer was withheld: the model's conscience flagged it and every rewritten "
                       "alternative too.")


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
        # the answer was cut in the middle to fit the judge's window: the verdict read only part of it
        "truncated": draft.verdict.truncated,
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
                final_truncated=best.verdict.truncated, unresolved=best.verdict.flagged)
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
    seed: int | None = None  # the request's own seed (None: the server's)
    stop: tuple[str, ...] = ()
    top_p: float | None = None  # None: the server's
    future: Future = field(default_factory=Future)
    call: Callable[[], Any] | None = None  # an exclusive task (e.g. an adapter swap) instead

    @property
    def key(self) -> tuple:
        """Jobs with the same key share a batch. A seeded sampled request runs alone: the draws of a
        batch are shared, so its answer would otherwise depend on the requests beside it."""
        alone = id(self) if self.seed is not None and self.temperature > 0 else None
        return (self.max_tokens, self.temperature, self.top_p, self.top_logprobs, self.seed, self.stop, alone)


class Engine:
    """One worker thread that owns the model; :meth:`submit` returns a future per request."""

    def __init__(self, backend, cfg: ServeConfig, metrics: Metrics, learner=None):
        self.backend, self.cfg, self.metrics, self.learner = backend, cfg, metrics, learner
        self.queue: JobQueue[Job] = JobQueue(cfg.max_queue)
        self._thread: threading.Thread | None = None
        self._guard: GuardedReviewer | None = None
        self._guard_lock = threading.Lock()  # upstream requests run on many threads
        # upstream: each request on its own thread, `slots` of them in flight at once; local: batches
        self.slots = cfg.upstream_concurrency if getattr(backend, "kind", "local") == "upstream" else 0
        self._free = threading.BoundedSemaphore(max(self.slots, 1))
        self._requests = ThreadPoolExecutor(max_workers=self.slots, thread_name_prefix="request") if self.slots else None

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
            self.queue.put(None, force=True)
            self._thread.join(timeout=30)
            self._thread = None

    def pending(self) -> int:
        return self.queue.qsize()

    @property
    def parallel(self) -> int:
        """Requests answered at once: a batch (local) or the upstream slots."""
        return self.slots or self.cfg.max_batch

    def alive(self) -> bool:
        """The worker thread is running (a server whose worker died answers nothing)."""
        return self._thread is not None and self._thread.is_alive()

    # -- submission -----------------------------------------------------------------------------
    def submit(self, messages: list[dict], max_tokens: int, temperature: float, top_logprobs: int | None = None,
               seed: int | None = None, stop: tuple[str, ...] = (), top_p: float | None = None) -> Future:
        """Queue one request; raises :class:`~.job_queue.QueueFull` when ``max_queue`` are waiting."""
        job = Job(messages, max_tokens, temperature, top_logprobs, seed, tuple(stop), top_p)
        self.queue.put(job)
        return job.future

    def abandon(self, future: Future) -> bool:
        """The client of ``future`` went away: a request still waiting is dropped from the queue at
        once and never runs (True); one already running finishes unread (False)."""
        if future.cancel():
            self.queue.discard_future(future)
            return True
        return False

    def run_exclusive(self, call: Callable[[], Any]) -> Future:
        """Run ``call`` on the worker between batches (nothing else touches the model then)."""
        job = Job([], 0, 0.0, call=call)
        self.queue.put(job, force=True)
        return job.future

    # -- worker ---------------------------------------------------------------------------------
    def _loop(self) -> None:
        if self._requests is not None:
            return self._loop_concurrent()
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
                    self.queue.put_front(nxt)  # handled on the next turn, after this batch
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

    def _loop_concurrent(self) -> None:
        """Upstream: each request is drafted and reviewed alone on a request thread, up to
        :attr:`slots` at once (the upstream batches them); an exclusive task waits for all of them."""
        while True:
            job = self.queue.get()
            if job is None:
                self._requests.shutdown(wait=False)
                return
            taken = self.slots if job.call is not None else 1
            for _ in range(taken):
                self._free.acquire()
            if not job.future.set_running_or_notify_cancel():  # abandoned while queued
                self._release(taken)
            elif job.call is not None:
                try:
                    self._settle([job], lambda job=job: [job.call()])
                finally:
                    self._release(taken)
            else:
                self._requests.submit(self._one, job)

    def _one(self, job: Job) -> None:
        try:
            self._settle([job], lambda: self._run([job]))
        except BaseException as exc:  # never leave a request unanswered
            if not job.future.done():
                job.future.set_exception(exc)
        finally:
            self._release(1)

    def _release(self, n: int) -> None:
        for _ in range(n):
            self._free.release()

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
        with self._guard_lock:
            conscience = self.backend.conscience
            if not isinstance(conscience.reviewer, GuardedReviewer):
                if self._guard is not None:
                    self._guard.wait_idle()
                conscience.reviewer = GuardedReviewer(conscience.reviewer, self.cfg.review_timeout, self.metrics,
                                                      shares_model=self.backend.kind == "local",
                                                      max_overrun=OVERRUNS_PER_SLOT * max(self.slots, 1))
            self._guard = conscience.reviewer
            return conscience

    def _busy_outcome(self, job: Job) -> Outcome:
        """A request that arrived while a local review overran: not drafted, withheld (closed)."""
        error = "the conscience is still busy with a review that overran its timeout"
        log(f"review failed: {error}")
        self.metrics.inc("conscience_checker_failures_total")
        note = {"status": "check_failed", "mode": self.cfg.action, "framing": self._guard.framing_name,
                "kind": "failed", "score": None, "flagged": False, "threshold": self._guard.threshold,
                "revised": False, "rounds": 0, "truncated": False, "error": error}
        return Outcome(WITHHELD_CHECK_FAILED, "content_filter", "check_failed", note,
                       self.backend.count_tokens(job.messages), self.backend.count_text_tokens(WITHHELD_CHECK_FAILED))

    def _run(self, jobs: list[Job]) -> list[Outcome]:
        """One batch of requests with the same sampling: the conscience step (revise, block or
        monitor: block and monitor never revise), or bare drafts with the conscience off."""
        chats = [j.messages for j in jobs]
        job = jobs[0]  # the batch shares its sampling (Job.key)
        # an upstream samples with its own seed unless the request gives one; a local model with the server's
        seed = job.seed if job.seed is not None or self.slots else self.backend.conscience.sampling.seed
        request = dict(max_new_tokens=job.max_tokens, temperature=job.temperature, top_logprobs=job.top_logprobs,
                       seed=seed, **({} if job.top_p is None else {"top_p": job.top_p}))
        if not self.cfg.review:
            sampling = replace(self.backend.conscience.sampling, **request)
            generator = StopAtSequences(self.backend.generator, job.stop) if job.stop else self.backend.generator
            drafts = generator.generate(chats, sampling)
            return [Outcome(d.answer, "stop", "off", None, self.backend.count_tokens(c), d.new_tokens, d.logprobs)
                    for c, d in zip(chats, drafts, strict=True)]
        conscience = self._guarded()
        sampling = replace(conscience.sampling, **request)
        if job.stop:
            conscience = with_stops(conscience, job.stop)
        responses = conscience.respond_batch(chats, sampling)
        outcomes = []
        for chat, response in zip(chats, responses, strict=True):
            content, finish, status, note = decide(response, self.cfg)
            if self.cfg.expose_trace and finish != "content_filter":  # withheld stays withheld
                note["draft"] = response.draft.answer
                note["draft_verdict"] = _candidate_view(response.draft)
                note["alternatives"] = [_candidate_view(c) for c in response.candidates[1:]]
            # log-probs describe the draft: given only when the draft itself is released (monitor)
            logprobs = response.draft.logprobs if status in ("ok", "flagged") else None
            outcomes.append(Outcome(content, finish, status, note, self.backend.count_tokens(chat),
                                    self.backend.count_text_tokens(content), logprobs, response))
        if self.learner is not None:
            try:
                self.learner.observe([o.response for o in outcomes if o.status in ("revised", "unresolved")])
            except Exception as exc:  # learning must never break serving
                log(f"learning: could not record pairs: {exc}")
        return outcomes
