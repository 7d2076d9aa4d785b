"""`conscience serve` end to end: real servers in subprocesses, driven by the `openai` client.

Two servers (tiny random model), started together once for this module:
  main   --action monitor, never flagged (threshold 0), API key, log-probs  -> normal answer, stream, 401, 400;
         it is also the upstream of:
  proxy  --upstream <main>, --action revise, always flagged (threshold 1), trace exposed, unresolved answers
         released marked -> flagged + revised twice + unresolved
The block action runs in-process (tests/test_serve_app.py) to keep the number of torch processes low.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

TINY = ["--model", "tiny", "--temperature", "1.0", "--max-new-tokens", "12", "--max-rounds", "2"]
KEY = "test-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, args: list[str], log_dir: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_dir / f"{name}.log"
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "conscience.cli", "serve", "--port", str(self.port), *args],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "w"), env=env)

    def wait(self, timeout: float = 120.0) -> "Server":
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    logs = tmp_path_factory.mktemp("serve-logs")
    main = Server("main", TINY + ["--action", "monitor", "--threshold", "0.0", "--api-key", KEY, "--max-logprobs", "1000",
                                  "--model-name", "upstream-tiny"], logs)
    proxy = Server("proxy", ["--upstream", main.url, "--upstream-api-key", KEY, "--upstream-top-logprobs", "1000",
                             "--threshold", "1.0", "--expose-trace", "--on-unresolved", "release", "--temperature", "1.0", "--max-new-tokens", "12",
                             "--max-rounds", "2"], logs)
    running = [main, proxy]
    try:
        for server in running:
            server.wait()
        yield {"main": main, "upstream": main, "proxy": proxy}
    finally:
        for server in running:
            server.stop()


def client(server: Server, key: str = "none") -> "openai.OpenAI":
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=120)


ASK = [{"role": "user", "content": "What should I do with a found wallet?"}]


def test_normal_answer(servers):
    reply = client(servers["main"], KEY).chat.completions.create(model="upstream-tiny", messages=ASK)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content  # the released draft
    assert reply.usage.prompt_tokens > 0
    note = reply.model_extra["conscience"]
    assert note["status"] == "checked" and note["flagged"] is False and note["mode"] == "monitor"
    assert 0.0 <= note["score"] <= 1.0 and note["framing"] == "aligned"
    assert "draft" not in note  # the trace is not exposed by default
    models = client(servers["main"], KEY).models.list()
    assert [m.id for m in models.data] == ["upstream-tiny"]


def test_streaming_after_review(servers):
    stream = client(servers["main"], KEY).chat.completions.create(
        model="upstream-tiny", messages=ASK, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    plain = client(servers["main"], KEY).chat.completions.create(model="upstream-tiny", messages=ASK)
    assert text == plain.choices[0].message.content  # seeded: the same reviewed answer
    finals = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals[0].choices[0].finish_reason == "stop" and finals[0].model_extra["conscience"]["status"] == "checked"
    assert chunks[-1].usage.total_tokens > 0
    raw = urllib.request.urlopen(urllib.request.Request(
        servers["main"].url + "/v1/chat/completions", data=json.dumps({"messages": ASK, "stream": True}).encode(),
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})).read().decode()
    assert raw.rstrip().endswith("data: [DONE]")


def test_missing_key_is_401(servers):
    with pytest.raises(openai.AuthenticationError) as info:
        client(servers["main"], "wrong").chat.completions.create(model="upstream-tiny", messages=ASK)
    assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"


def test_malformed_body_is_400(servers):
    c = client(servers["main"], KEY)
    with pytest.raises(openai.BadRequestError) as info:
        c.chat.completions.create(model="upstream-tiny", messages=[{"role": "wizard", "content": "hi"}])
    assert info.value.body["type"] == "invalid_request_error" and "role" in info.value.body["message"]
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="upstream-tiny", messages=ASK, max_tokens=10**6)
    request = urllib.request.Request(servers["main"].url + "/v1/chat/completions", data=b"{not json",
                                     headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as http:
        urllib.request.urlopen(request)
    assert http.value.code == 400 and "error" in json.loads(http.value.read())


def test_upstream_drafts_and_reviews(servers):
    with pytest.raises(openai.NotFoundError) as unknown:
        client(servers["proxy"]).chat.completions.create(model="x", messages=ASK)
    assert unknown.value.body["code"] == "model_not_found" and unknown.value.body["param"] == "model"
    reply = client(servers["proxy"]).chat.completions.create(model="upstream-tiny", messages=ASK)
    assert reply.model == "upstream-tiny"  # the upstream's model id
    note = reply.model_extra["conscience"]
    # threshold 1.0 flags every candidate: released (--on-unresolved release) but marked, never as fine
    assert note["kind"] == "upstream" and note["status"] == "unresolved" and note["unresolved"] is True
    assert note["final_flagged"] is True and "every candidate was flagged" in note["explanation"]
    assert note["flagged"] is True and note["rounds"] == 2  # threshold 1.0: always flagged, so revised twice
    assert 0.0 < note["score"] < 1.0
    assert [a["round"] for a in note["alternatives"]] == [1, 2]
    assert all(a["checked"] and 0.0 < a["score"] < 1.0 for a in note["alternatives"])
    best = max([note["draft_verdict"]] + note["alternatives"], key=lambda a: (a["score"], -a["round"]))
    assert reply.choices[0].message.content == best["answer"]
    # the draft really came from the upstream: the bare upstream gives the same seeded text
    bare = client(servers["upstream"], KEY).chat.completions.create(model="upstream-tiny", messages=ASK, max_tokens=12)
    assert note["draft"] == bare.choices[0].message.content


def test_upstream_logprobs(servers):
    reply = client(servers["upstream"], KEY).chat.completions.create(
        model="upstream-tiny", messages=ASK, max_tokens=1, temperature=0, logprobs=True, top_logprobs=5)
    position = reply.choices[0].logprobs.content[0]
    tops = [t.logprob for t in position.top_logprobs]
    assert len(tops) == 5 and tops == sorted(tops, reverse=True) and position.logprob == pytest.approx(tops[0])


@pytest.mark.skipif(not (shutil.which("chromium") and shutil.which("chromedriver")),
                    reason="headless Chromium (apt-get install chromium chromium-driver) is not installed")
def test_web_page_shows_draft_verdict_alternative(servers, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chrome'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        driver.get(servers["proxy"].url + "/")
        driver.find_element(By.ID, "prompt").send_keys("What should I do with a found wallet?")
        driver.find_element(By.ID, "send").click()
        answer = WebDriverWait(driver, 90).until(
            ec.presence_of_element_located((By.CSS_SELECTOR, ".msg.assistant.answer")))
        assert "flagged" in answer.get_attribute("class")
        details = answer.find_element(By.CSS_SELECTOR, "details.conscience")
        details.find_element(By.TAG_NAME, "summary").click()
        text = details.text
        assert "flagged" in text and "score" in text
        labels = [dt.text for dt in details.find_elements(By.TAG_NAME, "dt")]
        assert "draft" in labels and "alternative 1" in labels and "alternative 2" in labels
    finally:
        driver.quit()
