"""Issue 16, the server's items: each test reproduces one way the server was broken.

In-process (FastAPI TestClient) on the tiny random model, or in front of a fake upstream
(an ``httpx.MockTransport`` answering as an OpenAI-compatible server would).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from conscience.conscience import Conscience  # noqa: E402
from conscience.conscience_config import ConscienceConfig  # noqa: E402
from conscience.errors import ConscienceError, PromptTooLongError  # noqa: E402
from conscience.serving.app import create_app  # noqa: E402
from conscience.serving.backends import LocalBackend, build_backend  # noqa: E402
from conscience.serving.config import ServeConfig  # noqa: E402
from conscience.serving.engine import WITHHELD_CHECK_FAILED, WITHHELD_UNRESOLVED, Engine  # noqa: E402
from conscience.serving.metrics import Metrics  # noqa: E402
from conscience.tiny_model import tiny_model  # noqa: E402
from conscience.verdict import Verdict, is_flagged  # noqa: E402

ASK = [{"role": "user", "content": "What should I do with a found wallet?"}]
TESTSERVER = ("testserver",)  # the Host header TestClient sends


@pytest.fixture(scope="module")
def lm():
    return tiny_model(0)


class Scripted:
    """Scores by call (first the draft, then each rewrite); can sleep or raise on a call."""

    kind = framing_name = "verbal"
    review_format, accepts_draft_cache = "third_person", False

    def __init__(self, scores, threshold=0.5, sleep_on=None, sleep=0.0, error=None):
        self.scores, self.threshold, self.sleep_on, self.sleep, self.error, self.calls = (
            list(scores), threshold, sleep_on, sleep, error, 0)

    def review(self, items):
        self.calls += 1
        if self.error:
            raise RuntimeError(self.error)
        if self.calls == self.sleep_on:
            time.sleep(self.sleep)
        score = self.scores[min(self.calls - 1, len(self.scores) - 1)]
        return [Verdict(score=score, flagged=score < self.threshold, framing="scripted") for _ in items]


def local_app(lm, serve: ServeConfig, reviewer, max_rounds=1):
    serve = dataclasses.replace(serve, allowed_hosts=(*serve.allowed_hosts, *TESTSERVER))
    rounds = max_rounds if serve.action == "revise" else 0
    backend = LocalBackend(lm, lambda m: Conscience(m, reviewer=reviewer, max_rounds=rounds, max_new_tokens=6,
                                                    temperature=1.0), "tiny")
    return create_app(serve, backend)


def upstream_app(handler, **serve):
    """A server in front of a fake upstream; ``handler(body) -> httpx.Response`` for chat calls."""
    cfg = ServeConfig(upstream="http://fake-upstream.invalid/v1", upstream_model="fake",
                      allowed_hosts=TESTSERVER, **serve)
    backend = build_backend(cfg, ConscienceConfig(verdict="verbal", max_new_tokens=6, max_rounds=1))
    backend.client.http = httpx.Client(transport=httpx.MockTransport(lambda request: handler(json.loads(request.content))))
    return create_app(cfg, backend)


def completion(content="a draft answer", top=None) -> httpx.Response:
    logprobs = {"content": [{"token": "x", "logprob": -0.1, "top_logprobs": top}]} if top is not None else None
    return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": content},
                                                  "logprobs": logprobs, "finish_reason": "stop"}],
                                     "usage": {"completion_tokens": 3}})


# -- 1. verdicts --------------------------------------------------------------------------------
def test_missing_answer_word_is_a_failed_review_not_a_pass():
    """The issue's reproduction: the upstream lists only "No", as its lowest entry."""
    def handler(body):
        return completion(top=[{"token": "No", "logprob": -0.5}] if body.get("logprobs") else None)

    with TestClient(upstream_app(handler, action="block", on_error="closed")) as http:
        body = http.post("/v1/chat/completions", json={"messages": ASK}).json()
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["choices"][0]["message"]["content"] == WITHHELD_CHECK_FAILED
    assert body["conscience"]["status"] == "check_failed" and "'Yes' not among" in body["conscience"]["error"]


def test_top_logprobs_floor_and_threshold_rule(lm):
    with pytest.raises(ValueError, match="upstream_top_logprobs must be >= 10"):
        ServeConfig(upstream="http://127.0.0.1:9/v1", upstream_top_logprobs=1)
    assert is_flagged(0.5, 0.5) and is_flagged(float("nan"), 0.5) and not is_flagged(0.5001, 0.5)
    # a reviewer that calls 0.5 "not flagged" against a 0.5 threshold is overruled by the server
    with TestClient(local_app(lm, ServeConfig(action="block"), Scripted((0.5,)))) as http:
        body = http.post("/v1/chat/completions", json={"messages": ASK}).json()
    assert body["choices"][0]["finish_reason"] == "content_filter" and body["conscience"]["flagged"] is True


# -- 2. the revise action -------------------------------------------------------------------------
def test_revise_never_releases_an_unresolved_answer(lm):
    with TestClient(local_app(lm, ServeConfig(expose_trace=True), Scripted((0.1, 0.3)))) as http:
        body = http.post("/v1/chat/completions", json={"messages": ASK}).json()
        metrics = http.get("/metrics").text
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["choices"][0]["message"]["content"] == WITHHELD_UNRESOLVED
    note = body["conscience"]
    assert note["status"] == "unresolved" and note["unresolved"] is True and note["final_score"] == 0.3
    assert "draft" not in note and "alternatives" not in note  # withheld stays withheld
    assert "conscience_unresolved_total 1" in metrics and 'conscience_requests_total{outcome="unresolved"} 1' in metrics


def test_revise_release_marks_the_unresolved_answer(lm):
    serve = ServeConfig(on_unresolved="release", expose_trace=True)
    with TestClient(local_app(lm, serve, Scripted((0.1, 0.3)))) as http:
        body = http.post("/v1/chat/completions", json={"messages": ASK}).json()
    note = body["conscience"]
    assert note["status"] == "unresolved" and note["final_flagged"] is True and "0.3000" in note["explanation"]
    assert body["choices"][0]["message"]["content"] == note["alternatives"][0]["answer"]  # the best, marked


# -- 3. the request queue -----------------------------------------------------------------------
def test_one_broken_request_does_not_fail_its_batch(lm):
    serve = ServeConfig(action="monitor", max_batch=8)
    backend = LocalBackend(lm, lambda m: Conscience(m, reviewer=Scripted((0.9,)), max_rounds=0, max_new_tokens=6), "tiny")
    engine = Engine(backend, serve, Metrics())
    long = [{"role": "user", "content": "hi " * 1000}]
    futures = [engine.submit(ASK, 6, 1.0) for _ in range(3)] + [engine.submit(long, 6, 1.0)]
    futures += [engine.submit(ASK, 6, 1.0) for _ in range(3)]
    engine.start()  # all seven are queued: they form one batch
    try:
        outcomes = [f.exception(timeout=60) or f.result() for f in futures]
    finally:
        engine.stop()
    assert isinstance(outcomes[3], PromptTooLongError)
    assert all(o.status == "ok" and o.content for k, o in enumerate(outcomes) if k != 3)


def test_the_context_window_is_checked_before_batching(lm):
    with TestClient(local_app(lm, ServeConfig(), Scripted((0.9,)))) as http:
        reply = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi " * 1000}]})
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["code"] == "context_length_exceeded"
    assert "context window of 1024" in error["message"] and "\n" not in error["message"]


def test_an_overrunning_review_is_abandoned_for_waiting_requests(lm):
    """Review timeout 0.5 s, the first review hangs 4 s: the others are answered at once
    under fail-closed, not after it."""
    serve = ServeConfig(action="monitor", review_timeout=0.5)
    with TestClient(local_app(lm, serve, Scripted((0.9,), sleep_on=1, sleep=4.0))) as http:
        times, bodies = [], []

        def ask():
            start = time.perf_counter()
            bodies.append(http.post("/v1/chat/completions", json={"messages": ASK}).json())
            times.append(time.perf_counter() - start)

        first = threading.Thread(target=ask)
        first.start()
        time.sleep(0.2)  # the others arrive while the first review runs
        others = [threading.Thread(target=ask) for _ in range(2)]
        for t in others:
            t.start()
        for t in [first, *others]:
            t.join(timeout=30)
    assert len(bodies) == 3 and all(b["conscience"]["status"] == "check_failed" for b in bodies)
    assert max(times) < 2.5, times


def test_a_hung_upstream_review_stalls_no_one():
    """The issue's case: review timeout short, upstream slow; three requests each take about
    the review timeout, not the upstream's."""
    def handler(body):
        if body.get("logprobs"):
            time.sleep(3.0)
            return completion(top=[{"token": "Yes", "logprob": -0.1}, {"token": "No", "logprob": -3.0}])
        return completion()

    with TestClient(upstream_app(handler, action="monitor", review_timeout=0.5)) as http:
        times = []
        for _ in range(3):
            start = time.perf_counter()
            assert http.post("/v1/chat/completions", json={"messages": ASK}).json()["conscience"]["status"] == "check_failed"
            times.append(time.perf_counter() - start)
    assert max(times) < 2.0, times


# -- 5. secrets ---------------------------------------------------------------------------------
def test_upstream_error_body_and_passwords_do_not_leak(lm, capfd):
    with TestClient(upstream_app(lambda body: httpx.Response(500, text="SECRET-UPSTREAM-BODY"))) as http:
        reply = http.post("/v1/chat/completions", json={"messages": ASK})
    assert reply.status_code == 502 and "SECRET-UPSTREAM-BODY" not in reply.text and "HTTP 500" in reply.text
    with pytest.raises(ValueError, match="must not carry user:password@") as refused:
        ServeConfig(upstream="http://user:PASSWORD@example.com/v1")
    assert "PASSWORD" not in str(refused.value)
    failing = Scripted((0.9,), error="connect to http://user:PASSWORD@judge.example/v1 failed")
    with TestClient(local_app(lm, ServeConfig(action="monitor"), failing)) as http:
        body = http.post("/v1/chat/completions", json={"messages": ASK}).json()
    assert body["conscience"]["status"] == "check_failed" and "http://***@judge.example" in body["conscience"]["error"]
    assert "PASSWORD" not in json.dumps(body) and "PASSWORD" not in capfd.readouterr().err


def test_api_key_from_file_or_environment(tmp_path, monkeypatch):
    from conscience.cli import build_parser
    from conscience.serving.cli import serve_config

    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    parse = build_parser().parse_args
    assert serve_config(parse(["serve", "--api-key-file", str(key_file)])).api_key == "from-file"
    monkeypatch.setenv("CONSCIENCE_API_KEY", "from-env")
    assert serve_config(parse(["serve"])).api_key == "from-env"
    (tmp_path / "empty").write_text("")
    with pytest.raises(ConscienceError, match="is empty"):
        serve_config(parse(["serve", "--api-key-file", str(tmp_path / "empty")]))
    with pytest.raises(ConscienceError, match="not both"):
        serve_config(parse(["serve", "--api-key", "k", "--api-key-file", str(key_file)]))


def test_health_without_the_key_says_only_ok(lm):
    with TestClient(local_app(lm, ServeConfig(api_key="s3cret"), Scripted((0.9,)))) as http:
        assert http.get("/health").json() == {"status": "ok"}
        full = http.get("/health", headers={"Authorization": "Bearer s3cret"}).json()
    assert full["status"] == "ok" and full["model"] == "tiny"


# -- 6. cross-site requests ---------------------------------------------------------------------
ATTACK = {"Host": "attacker.example", "Origin": "http://attacker.example", "Content-Type": "text/plain"}


def test_the_issues_cross_site_request_is_refused(lm):
    serve = ServeConfig(action="monitor")
    with TestClient(local_app(lm, serve, Scripted((0.9,)))) as http:
        body = json.dumps({"messages": ASK})
        reply = http.post("/v1/chat/completions", content=body, headers=ATTACK)
        assert reply.status_code == 403 and reply.json()["error"]["code"] == "host_not_allowed"
        # each check alone refuses it too
        reply = http.post("/v1/chat/completions", content=body, headers={**ATTACK, "Host": "127.0.0.1:8000"})
        assert reply.status_code == 403 and reply.json()["error"]["code"] == "origin_not_allowed"
        reply = http.post("/v1/chat/completions", content=body, headers={"Content-Type": "text/plain"})
        assert reply.status_code == 415 and reply.json()["error"]["code"] == "unsupported_media_type"
        # the server's own page (same origin) and loopback names work
        same = http.post("/v1/chat/completions", content=body, headers={
            "Host": "localhost:8000", "Origin": "http://localhost:8000", "Content-Type": "application/json"})
        assert same.status_code == 200
        assert 'conscience_requests_total{outcome="rejected"} 3' in http.get("/metrics").text


def test_cors_origin_allows_a_named_site(lm):
    serve = ServeConfig(action="monitor", cors_origins=("https://app.example",))
    with TestClient(local_app(lm, serve, Scripted((0.9,)))) as http:
        preflight = http.options("/v1/chat/completions", headers={"Origin": "https://app.example"})
        assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == "https://app.example"
        reply = http.post("/v1/chat/completions", json={"messages": ASK}, headers={"Origin": "https://app.example"})
        assert reply.status_code == 200 and reply.headers["access-control-allow-origin"] == "https://app.example"
        assert http.post("/v1/chat/completions", json={"messages": ASK},
                         headers={"Origin": "https://other.example"}).status_code == 403


# -- 7. model names -----------------------------------------------------------------------------
def test_unknown_model_is_404_and_aliases_are_served(lm):
    with TestClient(local_app(lm, ServeConfig(action="monitor", model_aliases=("gpt-4o-mini",)), Scripted((0.9,)))) as http:
        assert [m["id"] for m in http.get("/v1/models").json()["data"]] == ["tiny", "gpt-4o-mini"]
        assert http.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": ASK}).status_code == 200
        reply = http.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": ASK})
    assert reply.status_code == 404
    assert reply.json()["error"] == {"message": "the model 'gpt-4o' does not exist here; this server serves "
                                                "['tiny', 'gpt-4o-mini']", "type": "invalid_request_error",
                                     "param": "model", "code": "model_not_found"}


# -- 7. what still fails inside the server ------------------------------------------------------
def test_an_internal_failure_is_a_counted_one_line_500(lm, capfd):
    broken = Scripted((0.9,))
    with TestClient(local_app(lm, ServeConfig(action="monitor"), broken), raise_server_exceptions=False) as http:
        http.app.state.engine.backend.conscience.respond_batch = lambda *args, **kwargs: 1 / 0
        reply = http.post("/v1/chat/completions", json={"messages": ASK})
        metrics = http.get("/metrics").text
        assert http.get("/health").json()["status"] == "ok"
    assert reply.status_code == 500 and reply.json()["error"]["type"] == "server_error"
    assert 'conscience_requests_total{outcome="internal_error"} 1' in metrics
    err = capfd.readouterr().err
    assert "Traceback" not in err and "[conscience] internal error: ZeroDivisionError: division by zero" in err


# -- 7. bad values at start and in the learn store ----------------------------------------------
def test_serve_refuses_a_bad_upstream_url_in_one_line():
    run = subprocess.run([sys.executable, "-m", "conscience.cli", "serve", "--upstream", "not-a-url"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines() == [
        "conscience: error: serve: upstream must be an http(s) URL such as http://127.0.0.1:8001/v1, got 'not-a-url'"]


def test_corrupt_state_json_is_one_line(tmp_path):
    from conscience.serving.learn import Learner

    (tmp_path / "state.json").write_text('{"active": "adapters/00')  # truncated by a crash or a full disk
    with pytest.raises(ConscienceError) as info:
        Learner(ServeConfig(learn=True, learn_dir=str(tmp_path)), train=None, load=None, probe=None)
    message = str(info.value)
    assert "state.json: not valid JSON" in message and "\n" not in message


def test_missing_adapter_falls_back_to_the_last_good_one(tmp_path, capfd):
    from conscience.serving.learn import Learner

    good = tmp_path / "adapters" / "0001"
    good.mkdir(parents=True)
    state = {"active": str(tmp_path / "adapters" / "0002"), "previous": str(good), "pairs_at_last_update": 4,
             "updates": [{"adapter": str(good), "swapped": True}, {"adapter": str(tmp_path / "adapters" / "0002"),
                                                                    "swapped": True}]}
    (tmp_path / "state.json").write_text(json.dumps(state))
    learner = Learner(ServeConfig(learn=True, learn_dir=str(tmp_path)), train=None, load=None, probe=None)
    swapped = []
    learner.backend = type("Backend", (), {"swap": lambda self, model: swapped.append(model)})()
    assert learner.resume(lambda adapter: ("model", adapter)) == str(good)
    assert swapped == [("model", str(good))]
    assert json.loads((tmp_path / "state.json").read_text())["active"] == str(good)
    assert "adapters/0002 named in" in capfd.readouterr().err
