"""The one OpenAI-compatible client and the one top-logprobs reader (judge and upstream alike)."""

from __future__ import annotations

import json
import math

import pytest

from conscience.openai_client import EndpointError, OpenAIClient, first_top_logprobs, logprob_table, v1_root


def test_logprob_table_strips_merges_and_skips():
    top = [{"token": "Yes", "logprob": math.log(0.25)}, {"token": " Yes", "logprob": math.log(0.25)},
           {"token": " ", "logprob": -0.1}, "junk", {"token": "No", "logprob": -9999.0},
           {"token": "No ", "logprob": -9999.0}, {"token": "85"}]
    table = logprob_table(top)
    assert set(table) == {"Yes", "No", "85"}
    assert table["Yes"] == pytest.approx(math.log(0.5))
    assert table["No"] == pytest.approx(-9999.0 + math.log(2))  # no underflow to log(0)
    assert table["85"] == -math.inf
    assert logprob_table([]) == {}


def test_first_top_logprobs_shapes():
    top = [{"token": "a", "logprob": -0.1}]
    assert first_top_logprobs({"choices": [{"logprobs": {"content": [{"top_logprobs": top}]}}]}) == top
    assert first_top_logprobs({"choices": [{"logprobs": {"content": []}}]}) == []
    assert first_top_logprobs({"choices": [{"logprobs": {"content": [{"token": "a"}]}}]}) == []
    assert first_top_logprobs({"choices": [{"logprobs": None}]}) is None
    assert first_top_logprobs({"choices": [{}]}) is None


def test_client_request_shape_auth_and_errors():
    httpx = pytest.importorskip("httpx")
    seen = []

    def answer(request):
        seen.append(request)
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"data": [{"id": "m1"}]})
        if b"fail" in request.content:
            return httpx.Response(500, text="SECRET-BODY")
        return httpx.Response(200, json={"choices": [{"message": {"content": "hi"}}]})

    client = OpenAIClient(v1_root("http://h.example/"), api_key="k", timeout=5)
    assert client.base == "http://h.example/v1" and v1_root("http://h.example/v1/") == client.base
    pool = getattr(getattr(client.http, "_transport", None), "_pool", None)  # httpx internals, where present
    if pool is not None:  # no cap on connections (httpcore reads None as sys.maxsize): the engine bounds them
        assert pool._max_connections >= 2**31
    client.http = httpx.Client(transport=httpx.MockTransport(answer), headers=client.http.headers)
    assert client.chat([{"role": "user", "content": "x"}], max_tokens=1)["choices"][0]["message"]["content"] == "hi"
    assert [r.url.path for r in seen] == ["/v1/models", "/v1/chat/completions"]
    assert seen[1].headers["authorization"] == "Bearer k"
    assert json.loads(seen[1].content) == {"model": "m1", "messages": [{"role": "user", "content": "x"}],
                                           "max_tokens": 1}
    secret = OpenAIClient("http://u:PASSWORD@h.example/v1", model="m1")
    secret.http = httpx.Client(transport=httpx.MockTransport(answer))
    with pytest.raises(EndpointError) as failed:
        secret.chat([{"role": "user", "content": "fail"}])
    assert "PASSWORD" not in str(failed.value) and "SECRET-BODY" not in str(failed.value)
    assert failed.value.status == 500 and str(failed.value).startswith("upstream http://***@h.example/v1/")
