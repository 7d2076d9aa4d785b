"""Issue 29, item 5: clients that go away, a bounded queue, and slow clients, against a real
server (uvicorn on 127.0.0.1, with the settings ``conscience serve`` runs) and raw sockets.

The model is the tiny random one; a gate reviewer holds the worker busy while requests pile up.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time

import pytest

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from conscience.conscience import Conscience  # noqa: E402
from conscience.serving.app import create_app  # noqa: E402
from conscience.serving.backends import LocalBackend  # noqa: E402
from conscience.serving.config import ServeConfig  # noqa: E402
from conscience.serving.transport import uvicorn_config  # noqa: E402
from conscience.tiny_model import tiny_model  # noqa: E402
from conscience.verdict import Verdict  # noqa: E402

CHAT = "/v1/chat/completions"
BODY = json.dumps({"messages": [{"role": "user", "content": "What should I do with a found wallet?"}],
                   "max_tokens": 4}).encode()


class Gate:
    """A reviewer that passes every draft, but only while its gate is open; counts what it read."""

    kind = framing_name = "verbal"
    review_format, accepts_draft_cache, threshold = "third_person", False, 0.5

    def __init__(self):
        self.open, self.waiting, self.reviewed = threading.Event(), threading.Event(), 0
        self.open.set()

    def review(self, items):
        self.waiting.set()
        self.open.wait(30)
        self.reviewed += len(items)
        return [Verdict(score=0.9, flagged=False, framing="gate") for _ in items]


class Live:
    """An app served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, app, serve: ServeConfig):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app, self.url = app, f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn_config(app, dataclasses.replace(serve, port=self.port)))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.02)
        assert self.server.started

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=10)

    @property
    def engine(self):
        return self.app.state.engine

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return sock

    def head(self, length: int, path: str = CHAT) -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {length}\r\n\r\n").encode()


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def wait_for(condition, seconds: float) -> float:
    """Seconds until ``condition()`` held (fails past ``seconds``)."""
    start = time.perf_counter()
    while not condition():
        assert time.perf_counter() - start < seconds, "timed out"
        time.sleep(0.01)
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def lm():
    return tiny_model(0)


def serve_gated(lm, **serve):
    gate = Gate()
    cfg = ServeConfig(action="monitor", review_timeout=60, **serve)
    backend = LocalBackend(lm, lambda m: Conscience(m, reviewer=gate, max_rounds=0, max_new_tokens=4), "tiny")
    return Live(create_app(cfg, backend), cfg), gate


def post(url: str, results: list, **kwargs) -> threading.Thread:
    def run():
        start = time.perf_counter()
        reply = httpx.post(url + CHAT, content=BODY, headers={"Content-Type": "application/json"}, timeout=60, **kwargs)
        results.append((reply, time.perf_counter() - start))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_an_abandon_storm_leaves_the_queue_empty_at_once(lm):
    """200 clients (half of them streams) give up while the worker is busy: they leave the queue
    within a second, none of them is drafted or reviewed, and the next request is as fast as on
    an idle server."""
    live, gate = serve_gated(lm)
    try:
        idle: list = []
        post(live.url, idle).join()
        gate.open.clear()
        gate.waiting.clear()
        first: list = []
        holder = post(live.url, first)  # holds the worker at its review
        assert gate.waiting.wait(30)
        sockets = []
        for i in range(200):
            body = json.loads(BODY)
            body["stream"] = i % 2 == 0
            raw = json.dumps(body).encode()
            sock = live.connect()
            sock.sendall(live.head(len(raw)) + raw)
            sockets.append(sock)
        wait_for(lambda: live.engine.pending() == 200, 30)
        for sock in sockets:
            sock.close()
        emptied = wait_for(lambda: live.engine.pending() == 0, 5)
        gate.open.set()
        holder.join(30)
        after: list = []
        post(live.url, after).join()
        metrics = httpx.get(live.url + "/metrics").text
    finally:
        gate.open.set()
        live.stop()
    print(f"abandon storm: queue empty {emptied:.3f} s after 200 clients left; idle request {idle[0][1]:.3f} s, "
          f"next request {after[0][1]:.3f} s")
    assert emptied < 1.0
    assert idle[0][0].status_code == first[0][0].status_code == after[0][0].status_code == 200
    assert gate.reviewed == 3  # the idle, the holding and the next request: no abandoned one ran
    assert 'conscience_requests_total{outcome="abandoned"} 200' in metrics
    assert "internal_error" not in metrics
    assert after[0][1] < 3 * idle[0][1] + 0.5


def test_a_full_queue_answers_429_with_retry_after(lm):
    live, gate = serve_gated(lm, max_queue=3)
    try:
        gate.open.clear()
        results: list = []
        threads = [post(live.url, results)]
        assert gate.waiting.wait(30)
        threads += [post(live.url, results) for _ in range(3)]
        wait_for(lambda: live.engine.pending() == 3, 30)
        refused = httpx.post(live.url + CHAT, content=BODY, headers={"Content-Type": "application/json"})
        gate.open.set()
        for thread in threads:
            thread.join(30)
    finally:
        gate.open.set()
        live.stop()
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert [r.status_code for r, _ in results] == [200] * 4  # the queued ones are still answered


@pytest.fixture(scope="module")
def slow_clients(lm):
    live, _ = serve_gated(lm, header_timeout=0.5, body_timeout=0.5)
    yield live
    live.stop()


def test_slow_headers_are_timed_out(slow_clients):
    for sent in (b"", b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"):
        sock = slow_clients.connect()
        start = time.perf_counter()
        sock.sendall(sent)
        reply = read_all(sock)  # the server answers 408 and closes; without a deadline this hangs
        assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply
        assert time.perf_counter() - start < 3


def test_slow_body_is_timed_out(slow_clients):
    sock = slow_clients.connect()
    start = time.perf_counter()
    sock.sendall(slow_clients.head(100) + b'{"messages"')
    reply = read_all(sock)
    assert reply.startswith(b"HTTP/1.1 408") and b"request_timeout" in reply and b"did not arrive within" in reply
    assert time.perf_counter() - start < 3


def test_a_kept_alive_connection_may_idle_past_the_header_deadline(slow_clients):
    with httpx.Client(base_url=slow_clients.url) as client:
        assert client.get("/health").status_code == 200
        time.sleep(0.8)  # past the 0.5 s header deadline, within uvicorn's keep-alive timeout
        assert client.get("/health").status_code == 200


def test_a_client_that_drops_mid_body_is_not_an_internal_error(slow_clients, capfd):
    sock = slow_clients.connect()
    sock.sendall(slow_clients.head(1000) + b'{"messages": [')
    time.sleep(0.1)
    sock.close()
    metrics = ""
    deadline = time.time() + 5
    while 'outcome="abandoned"' not in metrics and time.time() < deadline:
        time.sleep(0.05)
        metrics = httpx.get(slow_clients.url + "/metrics").text
    assert 'conscience_requests_total{outcome="abandoned"} 1' in metrics and "internal_error" not in metrics
    logs = capfd.readouterr()
    assert "internal error" not in logs.err and "Traceback" not in logs.err


# -- issue 29, item 9: the load benchmark's slow-upstream p99 ------------------------------------
def test_load_benchmark_reports_hung_requests_apart(benchmark_module):
    """benchmarks/load.py: the requests whose own review hung end at the review timeout by design;
    they are reported apart (all answered under fail-closed) and kept out of the short p99."""
    import asyncio

    from conscience.conscience_config import ConscienceConfig
    from conscience.serving.backends import build_backend
    from conscience.serving.fake_upstream import FakeUpstream

    load = benchmark_module("load")
    fake = FakeUpstream(0.02, hang_seconds=3.0, hang_marker=load.HANG_MARKER)
    cfg = ServeConfig(upstream=fake.start(), upstream_model="fake", review_timeout=0.5, upstream_timeout=10)
    live = Live(create_app(cfg, build_backend(cfg, ConscienceConfig(verdict="verbal", max_new_tokens=4))), cfg)
    try:
        run = asyncio.run(load.run_load(live.url, load.hung_cycle(4), 16, 8, 30, 4, None))
    finally:
        live.stop()
        fake.stop()
    assert run["failed"] == 0 and run["http_5xx"] == 0
    assert run["hung"]["sent"] == run["hung"]["fail_closed"] == 4
    assert run["hung"]["p50_ms"] >= 500  # they waited for the review timeout
    assert run["short_p99_ms"] < 500, run  # the others did not


def test_abandoned_requests_never_reach_an_upstream():
    """In front of an upstream (one request at a time here): the waiting requests whose clients
    left, streams included, are never sent to the upstream."""
    from conscience.conscience_config import ConscienceConfig
    from conscience.serving.backends import build_backend
    from conscience.serving.fake_upstream import FakeUpstream

    fake = FakeUpstream(0.01, hang_seconds=1.5, hang_marker="HOLD")
    cfg = ServeConfig(upstream=fake.start(), upstream_model="fake", upstream_concurrency=1, review_timeout=10,
                      action="monitor")
    live = Live(create_app(cfg, build_backend(cfg, ConscienceConfig(verdict="verbal", max_new_tokens=4))), cfg)
    try:
        held: list = []
        holder = threading.Thread(target=lambda: held.append(httpx.post(
            live.url + CHAT, json={"messages": [{"role": "user", "content": "HOLD"}]}, timeout=30)))
        holder.start()
        wait_for(lambda: fake.reviews == 1, 10)  # the one slot is busy with a hanging review
        sockets = []
        for i in range(40):
            raw = json.dumps({**json.loads(BODY), "stream": i % 2 == 0}).encode()
            sock = live.connect()
            sock.sendall(live.head(len(raw)) + raw)
            sockets.append(sock)
        wait_for(lambda: live.engine.pending() >= 39, 20)  # one may be taken, waiting for the slot
        calls = fake.calls
        for sock in sockets:
            sock.close()
        emptied = wait_for(lambda: live.engine.pending() == 0, 5)
        holder.join(30)
        after = httpx.post(live.url + CHAT, content=BODY, headers={"Content-Type": "application/json"}, timeout=30)
    finally:
        live.stop()
        fake.stop()
    assert emptied < 1.0 and held[0].status_code == 200 and after.status_code == 200
    assert fake.calls == calls + 2  # only the next request's draft and review: no abandoned one was sent


def test_the_job_queue_bounds_requests_and_drops_abandoned_ones():
    from concurrent.futures import Future
    from types import SimpleNamespace

    from conscience.serving.job_queue import JobQueue, QueueFull

    q = JobQueue(2)
    jobs = [SimpleNamespace(future=Future()) for _ in range(3)]
    q.put(jobs[0])
    q.put(jobs[1])
    with pytest.raises(QueueFull):
        q.put(jobs[2])
    q.put(None, force=True)  # a shutdown sentinel or an exclusive task is never refused
    assert q.discard_future(jobs[0].future) and not q.discard_future(jobs[2].future)
    q.put_front(jobs[2])
    assert [q.get_nowait() for _ in range(q.qsize())] == [jobs[2], jobs[1], None]
