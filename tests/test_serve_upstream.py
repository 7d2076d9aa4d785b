"""Upstream mode schedules each request on its own: a slow review delays only its own request.

A fake OpenAI-compatible upstream on 127.0.0.1 (a real HTTP server, so connections, threads and
timeouts are the ones a deployment sees) drafts a fixed answer and reviews through log-probs.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from conscience.config import ConscienceConfig  # noqa: E402
from conscience.serving.app import create_app  # noqa: E402
from conscience.serving.backends import build_backend  # noqa: E402
from conscience.serving.config import ServeConfig  # noqa: E402

YES = [{"token": "Yes", "logprob": -0.1}, {"token": "No", "logprob": -3.0}]


class Backlog(ThreadingHTTPServer):
    request_queue_size = 64  # the default 5 would drop concurrent connections (retried 1 s later)


class Upstream:
    """Reviews of a conversation that mentions SLOW take ``slow`` s; every other call ``latency`` s.
    Counts the calls in flight at once."""

    def __init__(self, slow: float = 0.0, latency: float = 0.02):
        self.slow, self.latency, self.in_flight, self.most = slow, latency, 0, 0
        self._lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                data = json.dumps(upstream.answer(body)).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        self.server = Backlog(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, body: dict) -> dict:
        review = bool(body.get("logprobs")) and body.get("max_tokens") == 1
        with self._lock:
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            time.sleep(self.slow if review and "SLOW" in json.dumps(body["messages"]) else self.latency)
        finally:
            with self._lock:
                self.in_flight -= 1
        choice = {"message": {"role": "assistant", "content": "Yes" if review else "a calm answer"},
                  "finish_reason": "stop",
                  "logprobs": {"content": [{"token": "Yes", "logprob": -0.1, "top_logprobs": YES}]} if review else None}
        return {"choices": [choice], "usage": {"completion_tokens": 1 if review else 3}}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream():
    fake = Upstream()
    yield fake
    fake.close()


def app_for(upstream: Upstream, **serve):
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
    upstream.slow = 8.0
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
    assert upstream.most == 2


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
