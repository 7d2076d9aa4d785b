"""Property-based fuzzing of ``/v1/chat/completions`` on the tiny model (hypothesis): any JSON
body, however odd, gets 200 or a 4xx in OpenAI's error shape — never a 5xx — and the server
still answers ``/health`` afterwards.

The app is called in-process through httpx's ASGI transport on one event loop (a request that
is refused costs well under a millisecond there), so 600 bodies stay a few seconds of the suite.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conscience.conscience_config import ConscienceConfig  # noqa: E402
from conscience.serving.app import create_app  # noqa: E402
from conscience.serving.backends import build_backend  # noqa: E402
from conscience.serving.config import ServeConfig  # noqa: E402
from conscience.tiny_model import tiny_model  # noqa: E402

# 600 fixed examples in the suite; CONSCIENCE_FUZZ_EXAMPLES=N runs N fresh random ones
EXAMPLES = int(os.environ.get("CONSCIENCE_FUZZ_EXAMPLES", "600"))
FIXED = "CONSCIENCE_FUZZ_EXAMPLES" not in os.environ
# any text, lone surrogates included (JSON escapes them; the server must refuse, not crash)
TEXT = st.text(st.characters(codec=None), max_size=40) | st.sampled_from(["\ud800", "a\udc00b", "\udfff"])
PROMPT = st.text(st.characters(codec="utf-8"), min_size=1, max_size=60).filter(lambda t: t.strip())
NUMBERS = st.one_of(st.integers(min_value=-(10**30), max_value=10**30),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, 2, 1e-39, 5e-324, 10**400]))
JSON_VALUES = st.recursive(st.none() | st.booleans() | NUMBERS | TEXT,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
                           max_leaves=12)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "developer", "tool", "wizard"]) | JSON_VALUES,
     "content": TEXT | st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]), "text": TEXT}),
                                max_size=3) | JSON_VALUES})
FIELDS = {
    "model": st.sampled_from(["tiny", "tiny-alias", "gpt-4o"]) | JSON_VALUES,
    "max_tokens": st.integers(min_value=-3, max_value=6) | JSON_VALUES,
    "max_completion_tokens": st.integers(min_value=-3, max_value=6) | JSON_VALUES,
    "temperature": NUMBERS | JSON_VALUES,
    "top_p": NUMBERS,
    "n": st.integers(min_value=-1, max_value=3) | JSON_VALUES,
    "stream": st.booleans() | JSON_VALUES,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | JSON_VALUES}) | JSON_VALUES,
    "logprobs": st.booleans() | JSON_VALUES,
    "top_logprobs": st.integers(min_value=-1, max_value=30) | JSON_VALUES,
    "seed": NUMBERS,
    "user": TEXT,
    "stop": TEXT | st.lists(TEXT, max_size=6) | JSON_VALUES,
    "tools": st.just([]) | JSON_VALUES,
    "presence_penalty": NUMBERS | JSON_VALUES,
    "logit_bias": st.dictionaries(TEXT, NUMBERS, max_size=2) | JSON_VALUES,
    "tool_choice": st.sampled_from(["none", "auto", "required"]) | JSON_VALUES,
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}) | JSON_VALUES,
}
# valid requests with odd but legal values (they reach the model), requests shaped like chat
# completions with any values, and arbitrary JSON documents
VALID_FIELDS = {
    "model": st.sampled_from(["tiny", "tiny-alias"]),
    "max_tokens": st.integers(min_value=1, max_value=3),  # few tokens: the model's time is not what is fuzzed
    "temperature": st.just(0.0) | st.floats(min_value=1e-3, max_value=2.0),
    "top_p": st.floats(min_value=1e-9, max_value=1.0),
    "n": st.just(1),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "logprobs": st.booleans(),
    "seed": st.integers(min_value=0, max_value=2**63 - 1),
    "user": PROMPT,
    "stop": st.lists(st.text(min_size=1, max_size=4), max_size=4),
}
VALID_BODIES = st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": PROMPT}), min_size=1, max_size=2)},
    optional=VALID_FIELDS)
CHAT_BODIES = st.fixed_dictionaries({"messages": st.lists(MESSAGE, min_size=1, max_size=3) | JSON_VALUES},
                                    optional=FIELDS)
BODIES = st.one_of(VALID_BODIES, CHAT_BODIES, JSON_VALUES)


class InProcess:
    """Synchronous calls to an ASGI app on one event loop, its lifespan (the worker) started; an
    exception in the app comes back as the 500 a client would see."""

    def __init__(self, app):
        self.loop = asyncio.new_event_loop()
        self.lifespan = app.router.lifespan_context(app)
        self.loop.run_until_complete(self.lifespan.__aenter__())
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://testserver")

    def post(self, url: str, **kwargs) -> httpx.Response:
        return self.loop.run_until_complete(self.client.post(url, **kwargs))

    def get(self, url: str, **kwargs) -> httpx.Response:
        return self.loop.run_until_complete(self.client.get(url, **kwargs))

    def close(self) -> None:
        self.loop.run_until_complete(self.client.aclose())
        self.loop.run_until_complete(self.lifespan.__aexit__(None, None, None))
        self.loop.close()


@pytest.fixture(scope="module")
def http():
    serve = ServeConfig(action="monitor", max_tokens=6, max_logprobs=20, model_aliases=("tiny-alias",),
                        allowed_hosts=("testserver",))
    cfg = ConscienceConfig(model="tiny", verdict="verbal", max_new_tokens=2, max_rounds=1, temperature=1.0)
    backend = build_backend(serve, cfg, lm=tiny_model(0))
    client = InProcess(create_app(serve, backend))
    yield client
    client.close()


def test_any_json_body_gets_200_or_4xx(http, capfd):
    seen = {"examples": 0, "5xx": 0, "200": 0}

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=FIXED, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(body=BODIES)
    def check(body):
        seen["examples"] += 1
        raw = json.dumps(body)  # NaN / Infinity come out as bare literals, as a careless client sends them
        reply = http.post("/v1/chat/completions", content=raw, headers={"Content-Type": "application/json"})
        seen["5xx"] += reply.status_code >= 500
        assert reply.status_code == 200 or 400 <= reply.status_code < 500, (reply.status_code, raw[:300])
        if reply.status_code == 200:
            seen["200"] += 1
            if body.get("stream") is True:
                assert reply.text.rstrip().endswith("data: [DONE]")
            else:
                assert reply.json()["object"] == "chat.completion"
        else:
            error = reply.json()["error"]
            assert error["message"] and "\n" not in error["message"]

    check()
    assert http.get("/health").json()["status"] == "ok"
    logs = capfd.readouterr()
    assert "Traceback" not in logs.err and "internal error" not in logs.err
    print(f"fuzz: {seen['examples']} examples, {seen['200']} answered 200, {seen['5xx']} 5xx")
    assert seen["examples"] >= EXAMPLES and seen["5xx"] == 0
