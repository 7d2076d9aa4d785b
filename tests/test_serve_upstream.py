"""Upstream mode schedules each request on its own: a slow review delays only its own request.

A fake OpenAI-compatible upstream on 127.0.0.1 (:mod:`conscience.serving.fake_upstream`, a real HTTP
server, so connections, threads and timeouts are the ones a deployment sees) drafts a fixed answer
and reviews through log-probs.
"""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from conscience.conscience_config import ConscienceConfig  # noqa: E402
from conscience.serving.app import create_app  # noqa: E402
from conscience.serving.backends import build_backend  # noqa: E402
from conscience.serving.config import ServeConfig  # noqa: E402
from conscience.serving.fake_upstream import FakeUpstream  # noqa: E402


@pytest.fixture
def upstream():
    """Reviews of a conversation that mentions SLOW take ``hang_seconds`` (set per test); every
    other call 0.02 s."""
    fake = FakeUpstream(latency=0.02, hang_marker="SLOW", draft="a calm answer", draft_tokens=3,
                        review_top=(("Yes", -0.1), ("No", -3.0)))
    fake.start()
    yield fake
    fake.stop()


def app_for(upstream: FakeUpstream, **serve):
    cfg = ServeConfig(upstream=upstream.url, upstream_model="fake", allowed_hosts=("testserver",),
                      upstream_timeout=30, **serve)
    return create_app(cfg, build_backend(cfg, ConscienceConfig(verdict="verbal", max_new_tokens=6, max_rounds=1)))


def ask_concurrently(http: TestClient, prompts: list[str], stagger: float = 0.0) -> list[tuple[str, float, dict]]:
    """Each prompt from its own client thread; ``(prompt, seconds, body)`` in prompt order."""
    results: dict[int, tuple[str, float, dict]] = {}

    def ask(i: int, prompt: str) -> None:
        start = time.perf_counter()
        body = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": prompt}]}).json()
        results[i] = (prompt, time.perf_counter() - start, body)

    threads = []
    for i, prompt in enumerate(prompts):
        threads.append(threading.Thread(target=ask, args=(i, prompt)))
        threads[-1].start()
        time.sleep(stagger if i == 0 else 0.0)
    for t in threads:
        t.join(timeout=60)
    return [results[i] for i in range(len(prompts))]


def test_a_slow_review_delays_only_its_own_request(upstream):
    """The first request's review hangs 8 s, past --review-timeout 2.5: it alone waits, and is
    answered fail-closed at the timeout; the six requests that arrive meanwhile are answered in
    the upstream's own time (a batch would have held them behind it, for the full timeout)."""
    upstream.hang_seconds = 8.0
    with TestClient(app_for(upstream, action="block", review_timeout=2.5)) as http:
        slow, *others = ask_concurrently(http, ["SLOW: what should I do?"] + [f"question {i}" for i in range(6)],
                                         stagger=0.3)
        metrics = http.get("/metrics").text
    assert slow[2]["conscience"]["status"] == "check_failed" and "timeout" in slow[2]["conscience"]["error"]
    assert slow[2]["choices"][0]["finish_reason"] == "content_filter"
    assert 2.0 < slow[1] < 6.0, slow[1]  # at the review timeout, not the upstream's 8 s
    for prompt, seconds, body in others:
        assert body["conscience"]["status"] == "checked" and not body["conscience"]["flagged"], (prompt, body)
        assert body["choices"][0]["message"]["content"] == "a calm answer"
        assert seconds < 1.5, (prompt, seconds)  # never the 2.5 s a shared batch would have cost
    assert "conscience_checker_failures_total 1" in metrics


def test_upstream_requests_in_flight_are_bounded(upstream):
    """upstream_concurrency=2: eight concurrent requests never put more than two calls in flight
    at the upstream (each request drafts, then reviews), and every one is answered."""
    upstream.latency = 0.1
    with TestClient(app_for(upstream, action="monitor", upstream_concurrency=2)) as http:
        results = ask_concurrently(http, [f"question {i}" for i in range(8)])
    assert all(body["conscience"]["status"] == "checked" for _, _, body in results)
    assert upstream.peak_in_flight == 2


def test_upstream_concurrency_is_checked():
    with pytest.raises(ValueError, match="upstream_concurrency"):
        ServeConfig(upstream_concurrency=0)


def test_overrunning_upstream_reviews_are_bounded():
    """Reviews left running past their timeout hold threads and connections: beyond max_overrun a
    review fails at once (fail-closed), and reviews run again once the overrunning ones end."""
    from conscience.serving.review_guard import GuardedReviewer
    from conscience.verdict import ReviewItem, Verdict

    class Hanging:
        kind = framing_name = "verbal"
        threshold, calls = 0.5, 0

        def review(self, items):
            self.calls += 1
            time.sleep(1.0 if self.calls <= 2 else 0.0)
            return [Verdict(score=0.9, flagged=False, framing="verbal") for _ in items]

    guard = GuardedReviewer(Hanging(), timeout=0.1, shares_model=False, max_overrun=2)
    item = [ReviewItem("a question", "an answer")]
    assert [guard.review(item)[0].error is not None for _ in range(2)] == [True, True]  # both overrun
    start = time.perf_counter()
    refused = guard.review(item)[0]
    assert "2 reviews are still running" in refused.error and time.perf_counter() - start < 0.05
    time.sleep(1.2)  # the overrunning reviews end
    assert guard.review(item)[0].error is None and guard.inner.calls == 3
