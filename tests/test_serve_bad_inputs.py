"""The bad-input corpus (tests/data/bad_http_inputs.yaml): every case gets its status and a
one-line error in OpenAI's shape, and no traceback or internal error reaches the logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from conscience.conscience_config import ConscienceConfig  # noqa: E402
from conscience.serving.app import create_app  # noqa: E402
from conscience.serving.backends import build_backend  # noqa: E402
from conscience.serving.config import ServeConfig  # noqa: E402
from conscience.tiny_model import tiny_model  # noqa: E402

CORPUS_FILE = Path(__file__).parent / "data" / "bad_http_inputs.yaml"
CORPUS = yaml.safe_load(CORPUS_FILE.read_text(encoding="utf-8"))
KEY = "corpus-key"
REQUIRED = {"name", "status"}
KNOWN = REQUIRED | {"method", "path", "body", "raw", "repeat_text", "close_text", "repeat_count", "encoding", "headers",
                    "code", "message"}


@pytest.fixture(scope="module")
def http():
    serve = ServeConfig(api_key=KEY, allowed_hosts=("testserver",))
    backend = build_backend(serve, ConscienceConfig(model="tiny", verdict="verbal", max_new_tokens=4, max_rounds=1),
                            lm=tiny_model(0))
    # raise_server_exceptions=False: a 500 must show up as a status here, like a client sees it
    with TestClient(create_app(serve, backend), raise_server_exceptions=False) as client:
        yield client


def request_of(case: dict) -> dict:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"}
    for name, value in (case.get("headers") or {}).items():
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    if "raw" in case:
        count = case.get("repeat_count", 0)
        text = case["raw"].replace("{REPEAT}", case.get("repeat_text", "") * count)
        text = text.replace("{CLOSE}", case.get("close_text", "") * count)
        content = text.encode(case.get("encoding", "utf-8"))
    elif "body" in case:
        content = json.dumps(case["body"]).encode()
    else:
        content = None
    # header values travel as latin-1, as on the wire (a non-ASCII byte in a key, say)
    return dict(method=case.get("method", "POST"), url=case.get("path", "/v1/chat/completions"), content=content,
                headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()])


def test_the_corpus_is_well_formed():
    names = [case["name"] for case in CORPUS]
    assert len(names) == len(set(names)) and len(CORPUS) >= 80
    for case in CORPUS:
        assert REQUIRED <= set(case) <= KNOWN, case["name"]


@pytest.mark.parametrize("case", CORPUS, ids=[case["name"] for case in CORPUS])
def test_bad_input(http, case, capfd):
    reply = http.request(**request_of(case))
    assert reply.status_code == case["status"], reply.text[:300]
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "\n" not in error["message"] and len(error["message"]) < 400
    if "code" in case:
        assert error["code"] == case["code"]
    if "message" in case:
        assert case["message"] in error["message"]
    logs = capfd.readouterr()
    assert "Traceback" not in logs.err + logs.out and "internal error" not in logs.err
    assert http.get("/health").json() == {"status": "ok"}  # still serving (no key: ok / not ok only)
