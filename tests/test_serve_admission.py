"""Issue 29, items 4 and 9 (server side): every stage's length is checked before the draft, the
review's cut is reported, and the smaller holes (an upstream's address in 502s, secrets in logged
URLs, ``/metrics`` without the key, ``stop`` / ``seed`` / ``tools`` / ``response_format``).

In-process (FastAPI TestClient) on the tiny random model (context window 1024 tokens), with the
real verbal reviewer where the review prompt matters.
"""

from __future__ import annotations

import dataclasses
import json
import threading

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

from conscience.conscience import Conscience  # noqa: E402
from conscience.conscience_config import ConscienceConfig  # noqa: E402
from conscience.generation import Generation  # noqa: E402
from conscience.openai_client import EndpointError, OpenAIClient, v1_root  # noqa: E402
from conscience.redact import redact  # noqa: E402
from conscience.serving.admission import REVIEW_ANSWER_ROOM, review_fixed_cost, verbal_readers  # noqa: E402
from conscience.serving.app import create_app  # noqa: E402
from conscience.serving.backends import LocalBackend, build_backend  # noqa: E402
from conscience.serving.config import ServeConfig  # noqa: E402
from conscience.tiny_model import tiny_model  # noqa: E402
from conscience.verdict import Verdict  # noqa: E402

TESTSERVER = ("testserver",)
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def lm():
    return tiny_model(0)


class Counting:
    """Wraps a generator; counts the conversations it drafted."""

    def __init__(self, inner):
        self.inner, self.lm, self.drafted = inner, inner.lm, 0

    def generate(self, chats, sampling, keep_cache=False):
        self.drafted += len(chats)
        return self.inner.generate(chats, sampling, keep_cache)


def verbal_app(lm, **serve):
    cfg = ServeConfig(allowed_hosts=TESTSERVER, **serve)
    backend = build_backend(cfg, ConscienceConfig(model="tiny", verdict="verbal", max_new_tokens=8, temperature=1.0),
                            lm=lm)
    backend.conscience.drafter = Counting(backend.conscience.drafter)
    return create_app(cfg, backend), backend


def hi(k: int) -> list[dict]:
    return [{"role": "user", "content": "hi " * k}]


def largest(fits, low: int = 1, high: int = 600) -> int:
    """The largest k in [low, high] with fits(k) (fits is monotone: true, then false)."""
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


# -- item 4: the review prompt ------------------------------------------------------------------
def test_a_prompt_the_review_cannot_hold_is_refused_before_the_draft(lm):
    """The issue's attack: the draft fits, the review prompt does not; under --on-error open the
    draft was released `unchecked`. Now a 400 up front, and nothing is drafted."""
    app, backend = verbal_app(lm, action="monitor", on_error="open")
    reader = verbal_readers(backend.conscience.reviewer)[0]
    window = lm.context_window

    def fixed(k):
        return review_fixed_cost(reader, backend.conscience._with_system(hi(k)))

    k = largest(lambda k: fixed(k) + 8 + 16 <= window) + 1  # max_tokens 8: the review has no room for it
    assert backend.count_tokens(hi(k)) + 8 <= window  # the draft alone would fit
    with TestClient(app) as http:
        reply = http.post(CHAT, json={"messages": hi(k), "max_tokens": 8})
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["code"] == "context_length_exceeded"
    assert "review" in error["message"] and f"context window of {window}" in error["message"]
    assert backend.conscience.drafter.drafted == 0


def test_at_the_bound_the_answer_is_cut_reviewed_and_marked_truncated(lm):
    """One token inside the bound, the longest draft that fits is cut for the review, reviewed
    (no failed check), and the response says it was cut. Pins REVIEW_ANSWER_ROOM to the reviewer."""
    app, backend = verbal_app(lm, action="monitor", on_error="closed")
    reader = verbal_readers(backend.conscience.reviewer)[0]
    window = lm.context_window
    k = largest(lambda k: review_fixed_cost(reader, backend.conscience._with_system(hi(k))) + REVIEW_ANSWER_ROOM
                <= window)
    max_tokens = window - backend.count_tokens(hi(k))  # the longest draft the window holds
    with TestClient(app) as http:
        body = http.post(CHAT, json={"messages": hi(k), "max_tokens": max_tokens, "seed": 3}).json()
        short = http.post(CHAT, json={"messages": hi(3), "max_tokens": 4}).json()
    note = body["conscience"]
    assert note["status"] == "checked" and "error" not in note, note
    assert note["truncated"] is True
    assert short["conscience"]["truncated"] is False


def test_a_rewrite_that_cannot_fit_is_refused_before_the_draft(lm):
    """--action revise: the draft and its review fit, a rewrite (conversation + answer + request +
    new answer) cannot. It was a 400 after the draft was made; now it is refused up front."""
    flagging = Scripted(0.1)
    backend = LocalBackend(lm, lambda m: Conscience(m, reviewer=flagging, max_rounds=1, max_new_tokens=8), "tiny")
    backend.conscience.drafter = Counting(backend.conscience.drafter)
    app = create_app(ServeConfig(allowed_hosts=TESTSERVER), backend)
    window, max_tokens = lm.context_window, 200
    k = largest(lambda k: backend.count_tokens(hi(k)) + 2 * max_tokens <= window)  # the draft fits easily
    with TestClient(app) as http:
        reply = http.post(CHAT, json={"messages": hi(k), "max_tokens": max_tokens})
    error = reply.json()["error"]
    assert reply.status_code == 400 and error["code"] == "context_length_exceeded" and "rewrite" in error["message"]
    assert backend.conscience.drafter.drafted == 0


class Scripted:
    """Scores every answer ``score``; records the answers it read."""

    kind = framing_name = "verbal"
    review_format, accepts_draft_cache, threshold = "third_person", False, 0.5

    def __init__(self, score: float):
        self.score, self.read = score, []

    def review(self, items):
        self.read += [item.answer for item in items]
        return [Verdict(score=self.score, flagged=self.score <= self.threshold, framing="scripted") for _ in items]


# -- item 5: tokenising --------------------------------------------------------------------------
def test_a_huge_prompt_is_refused_by_its_length_before_tokenising(lm):
    backend = LocalBackend(lm, lambda m: Conscience(m, reviewer=Scripted(0.9), max_rounds=0, max_new_tokens=4), "tiny")
    calls = []
    count = backend.count_tokens
    backend.count_tokens = lambda messages: calls.append(threading.current_thread().name) or count(messages)
    app = create_app(ServeConfig(action="monitor", allowed_hosts=TESTSERVER), backend)
    limit = 4096 * backend.max_token_chars
    with TestClient(app) as http:
        huge = http.post(CHAT, json={"messages": [{"role": "user", "content": "x" * (limit + 1)}]})
        assert calls == []  # refused by the character bound: never tokenised
        ok = http.post(CHAT, json={"messages": hi(3), "max_tokens": 2})
    assert huge.status_code == 400 and huge.json()["error"]["code"] == "context_length_exceeded"
    assert "characters" in huge.json()["error"]["message"]
    assert ok.status_code == 200
    assert calls[0].startswith("admission")  # the admission check tokenises off the event loop


# -- item 9 --------------------------------------------------------------------------------------
def test_metrics_need_the_key_when_one_is_set(lm):
    backend = LocalBackend(lm, lambda m: Conscience(m, reviewer=Scripted(0.9), max_rounds=0), "tiny")
    with TestClient(create_app(ServeConfig(api_key="k", allowed_hosts=TESTSERVER), backend)) as http:
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.get("/metrics", headers={"Authorization": "Bearer k"}).status_code == 200


def dead_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again: nothing listens there


def test_an_upstreams_address_never_reaches_the_client(capfd):
    port = dead_port()
    cfg = ServeConfig(upstream=f"http://127.0.0.1:{port}/v1?api_key=SECRET-Q", upstream_model="fake",
                      allowed_hosts=TESTSERVER, upstream_timeout=5)
    backend = build_backend(cfg, ConscienceConfig(verdict="verbal", max_new_tokens=4, max_rounds=0))
    with TestClient(create_app(cfg, backend)) as http:
        reply = http.post(CHAT, json={"messages": hi(2)})
    assert reply.status_code == 502 and reply.json()["error"]["code"] == "upstream_error"
    assert str(port) not in reply.text and "127.0.0.1" not in reply.text and "SECRET-Q" not in reply.text
    assert "ConnectError" in reply.json()["error"]["message"]
    assert "SECRET-Q" not in capfd.readouterr().err


def test_a_failed_upstream_review_names_no_address():
    def handler(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content).get("logprobs"):
            return httpx.Response(503, text="down")
        return httpx.Response(200, json={"choices": [{"message": {"content": "an answer"}}], "usage": {}})

    cfg = ServeConfig(upstream="http://upstream-host.internal:8123/v1", upstream_model="fake", action="monitor",
                      allowed_hosts=TESTSERVER)
    backend = build_backend(cfg, ConscienceConfig(verdict="verbal", max_new_tokens=4, max_rounds=0))
    backend.client.http = httpx.Client(transport=httpx.MockTransport(handler))
    with TestClient(create_app(cfg, backend)) as http:
        body = http.post(CHAT, json={"messages": hi(2)}).json()
    assert body["conscience"]["status"] == "check_failed" and "HTTP 503" in body["conscience"]["error"]
    assert "upstream-host" not in json.dumps(body) and "8123" not in json.dumps(body)


def test_secret_query_parameters_are_redacted():
    assert redact("http://h:1/v1?api_key=S1&model=m") == "http://h:1/v1?api_key=***&model=m"
    assert "S2" not in redact("upstream https://u:p@h/v1?x=1&access_token=S2 failed") and "p@" not in redact("https://u:p@h")
    sent = []
    client = OpenAIClient(v1_root("http://127.0.0.1:9?api-version=2&token=S3"), model="m", label="upstream")
    client.http = httpx.Client(transport=httpx.MockTransport(lambda r: sent.append(r.url) or httpx.Response(500)))
    with pytest.raises(EndpointError) as failure:
        client.chat([{"role": "user", "content": "hi"}])
    assert sent[0].path == "/v1/chat/completions" and dict(sent[0].params) == {"api-version": "2", "token": "S3"}
    assert "S3" not in str(failure.value) and "127.0.0.1" not in failure.value.public


class Fixed:
    """A drafter that writes a fixed text."""

    lm = None

    def __init__(self, text: str):
        self.text = text

    def generate(self, chats, sampling, keep_cache=False):
        return [Generation(self.text, self.text, None, 5, 0.0) for _ in chats]


def test_stop_cuts_the_answer_before_it_is_reviewed(lm):
    """A harmful head with a harmless tail: the review must read what is released, the head."""
    reviewer = Scripted(0.9)
    backend = LocalBackend(lm, lambda m: Conscience(m, reviewer=reviewer, max_rounds=0), "tiny")
    backend.conscience.drafter = Fixed("Step one: the harmful part. END Just kidding, I won't help.")
    with TestClient(create_app(ServeConfig(action="monitor", allowed_hosts=TESTSERVER), backend)) as http:
        body = http.post(CHAT, json={"messages": hi(2), "stop": ["END", "NEVER"]}).json()
        plain = http.post(CHAT, json={"messages": hi(2)}).json()
    assert body["choices"][0]["message"]["content"] == "Step one: the harmful part."
    assert reviewer.read == ["Step one: the harmful part.", "Step one: the harmful part. END Just kidding, I won't help."]
    assert plain["choices"][0]["message"]["content"].endswith("help.")


def test_seed_is_honoured(lm):
    backend = LocalBackend(lm, lambda m: Conscience(m, reviewer=Scripted(0.9), max_rounds=0, temperature=1.0), "tiny")
    with TestClient(create_app(ServeConfig(action="monitor", allowed_hosts=TESTSERVER), backend)) as http:
        def answer(seed, **extra):
            body = {"messages": hi(2), "max_tokens": 12, "temperature": 1.0, "seed": seed, **extra}
            return http.post(CHAT, json=body).json()["choices"][0]["message"]["content"]

        assert answer(5) == answer(5)
        assert len({answer(5), answer(6), answer(7)}) > 1  # without the seed all three used the server's
        # top_p is honoured too: a nucleus this small keeps only the likeliest token, so greedy decoding
        assert {answer(s, top_p=1e-6) for s in (5, 6)} == {answer(5, temperature=0.0)}


def test_seed_and_top_p_are_given_to_an_upstream_only_when_asked():
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((body.get("seed"), body.get("top_p")))
        return httpx.Response(200, json={"choices": [{"message": {"content": "an answer"}}], "usage": {}})

    cfg = ServeConfig(upstream="http://127.0.0.1:9/v1", upstream_model="fake", review=False, allowed_hosts=TESTSERVER)
    backend = build_backend(cfg, ConscienceConfig(verdict="verbal", max_new_tokens=4, max_rounds=0))
    backend.client.http = httpx.Client(transport=httpx.MockTransport(handler))
    with TestClient(create_app(dataclasses.replace(cfg), backend)) as http:
        http.post(CHAT, json={"messages": hi(2), "seed": 42, "top_p": 0.5})
        http.post(CHAT, json={"messages": hi(2)})
    assert seen == [(42, 0.5), (None, None)]
