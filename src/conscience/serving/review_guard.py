"""A reviewer run under a timeout: a review that raises, overruns or returns nonsense becomes a
failed verdict (``Verdict.error`` set), never a pass. Used by the serving engine."""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Sequence

from ..log import log
from ..redact import redact
from ..verdict import ReviewItem, Verdict, is_flagged
from .metrics import Metrics

# upstream: reviews each request slot may leave running past their timeout (bounds threads and connections)
OVERRUNS_PER_SLOT = 4


class GuardedReviewer:
    """Runs an inner reviewer in its own thread with a timeout; failures become failed verdicts.

    A failed verdict is never flagged (so no revision loop starts) but never counted as safe
    either: the decision treats it as a failed check.

    ``shares_model``: the reviewer runs on the serving model (local), so at most one review runs
    at a time and one that overran keeps the model :attr:`busy` until it ends. Otherwise
    (upstream: HTTP calls) reviews may overlap and an overrunning one is simply left behind.
    """

    def __init__(self, inner, timeout: float, metrics: Metrics | None = None, shares_model: bool = True,
                 max_overrun: int = 8 * OVERRUNS_PER_SLOT):
        self.inner = inner
        self.timeout = timeout
        self.metrics = metrics
        self.shares_model = shares_model
        self.kind = inner.kind
        # local: one review at a time on the model. Upstream: each review on a daemon thread of its
        # own (a pool would queue the next reviews behind overrunning ones), at most `max_overrun`
        # of them left running past their timeout; beyond that a review fails at once.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="review") if shares_model else None
        self.max_overrun = max_overrun
        self._overrunning = 0
        self._lock = threading.Lock()
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

    def _failed(self, n: int, error: str, public: str | None = None) -> list[Verdict]:
        """``n`` failed verdicts; the log gets ``error`` (redacted), the client ``public`` (default
        ``error``): an upstream's failure without its address."""
        error = redact(error)
        log(f"review failed: {error}")
        if self.metrics:
            self.metrics.inc("conscience_checker_failures_total", n)
        shown = error if public is None else redact(f"{public}")
        return [Verdict.failed(self.framing_name, shown) for _ in range(n)]

    def _submit(self, items: list[ReviewItem]) -> Future | None:
        if self._pool is not None:
            return self._pool.submit(self.inner.review, items)
        with self._lock:
            if self._overrunning >= self.max_overrun:
                return None
        future: Future = Future()

        def run() -> None:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self.inner.review(items))
                except BaseException as exc:  # handed to the waiting request, which fails closed
                    future.set_exception(exc)

        threading.Thread(target=run, name="review", daemon=True).start()
        return future

    def _abandon(self, future: Future) -> None:
        """Leave an overrunning review behind: local, the model stays busy until it ends;
        upstream, it is counted until it ends."""
        if self.shares_model:
            self._pending = future
            return
        with self._lock:
            self._overrunning += 1

        def ended(_: Future) -> None:
            with self._lock:
                self._overrunning -= 1

        future.add_done_callback(ended)

    def review(self, items: Sequence[ReviewItem]) -> list[Verdict]:
        if self.busy:  # the revision loop of a batch whose earlier review overran
            return self._failed(len(items), "an earlier review is still running past its timeout")
        future = self._submit(list(items))
        if future is None:
            return self._failed(len(items), f"{self.max_overrun} reviews are still running past their timeout")
        try:
            verdicts = future.result(timeout=self.timeout)
        except FutureTimeout:
            future.cancel()  # still queued behind other overrunning reviews: never starts
            self._abandon(future)
            return self._failed(len(items), f"the review exceeded its {self.timeout:g}s timeout")
        except Exception as exc:  # any failure of the checker is a failed check, never a pass
            public = getattr(exc, "public", None)
            return self._failed(len(items), f"{exc.__class__.__name__}: {exc}",
                                None if public is None else f"{exc.__class__.__name__}: {public}")
        if len(verdicts) != len(items) or not all(math.isfinite(v.score) and 0 <= v.score <= 1 for v in verdicts):
            return self._failed(len(items), "the reviewer returned malformed verdicts")
        for v in verdicts:  # one threshold rule for every reviewer: a score at the threshold is flagged
            v.flagged = v.flagged or is_flagged(v.score, self.threshold)
        return verdicts
