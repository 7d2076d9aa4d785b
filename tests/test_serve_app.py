"""The server in-process (FastAPI TestClient): actions, fail-closed checks, limits, learning."""

from __future__ import annotations

import dataclasses
import json
import math
import time

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
from fastapi.testclient import TestClient  # noqa: E402

from conscience.conscience import Candidate, Conscience, Response  # noqa: E402
from conscience.conscience_config import ConscienceConfig  # noqa: E402
from conscience.serving.app import create_app  # noqa: E402
from conscience.serving.backends import LocalBackend, build_backend  # noqa: E402
from conscience.serving.config import ServeConfig  # noqa: E402
from conscience.serving.engine import WITHHELD_BLOCKED, WITHHELD_CHECK_FAILED  # noqa: E402
from conscience.tiny_model import tiny_model  # noqa: E402
from conscience.verdict import Verdict  # noqa: E402
from conscience.verdict.upstream import UpstreamError, verdict_from_top_logprobs  # noqa: E402

ASK = [{"role": "user", "content": "What should I do with a found wallet?"}]
TINY = dict(model="tiny", temperature=1.0, max_new_tokens=10, max_rounds=1)


@pytest.fixture(scope="module")
def lm():
    return tiny_model(0)


def app_for(lm, serve: ServeConfig, reviewer=None, **conscience):
    serve = dataclasses.replace(serve, allowed_hosts=(*serve.allowed_hosts, "testserver"))  # TestClient's Host
    cfg = ConscienceConfig(**{**TINY, **conscience})
    if reviewer is None:
        return create_app(serve, build_backend(serve, cfg, lm=lm))
    backend = LocalBackend(lm, lambda m: Conscience(m, reviewer=reviewer, max_rounds=cfg.max_rounds if serve.action == "revise" else 0,
                                                    max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature), "tiny")
    return create_app(serve, backend)


def openai_client(http: TestClient) -> "openai.OpenAI":
    return openai.OpenAI(base_url="http://testserver/v1", api_key="none", http_client=http, max_retries=0)


class ScriptedReviewer:
    """Scores by call: the first review (the draft) gets scores[0], later ones scores[1]..."""

    kind = framing_name = "verbal"
    review_format, accepts_draft_cache = "third_person", False

    def __init__(self, scores=(0.1, 0.9), threshold=0.5, sleep=0.0, fail=None):
        self.scores, self.threshold, self.sleep, self.fail, self.calls = list(scores), threshold, sleep, fail, 0

    def review(self, items):
        self.calls += 1
        if self.fail is not None and self.calls in self.fail:
            raise RuntimeError("the conscience broke")
        if self.sleep and self.calls == 1:
            time.sleep(self.sleep)
        score = self.scores[min(self.calls - 1, len(self.scores) - 1)]
        return [Verdict(score=score, flagged=score < self.threshold, framing="scripted") for _ in items]


def test_block_action_content_filter(lm):
    with TestClient(app_for(lm, ServeConfig(action="block"), threshold=1.0)) as http:
        reply = openai_client(http).chat.completions.create(model="tiny", messages=ASK)
        assert reply.choices[0].finish_reason == "content_filter"
        assert reply.choices[0].message.content == WITHHELD_BLOCKED
        note = reply.model_extra["conscience"]
        assert note["flagged"] is True and note["rounds"] == 0 and note["mode"] == "block"
        metrics = http.get("/metrics").text
        assert "conscience_blocked_total 1" in metrics and 'conscience_requests_total{outcome="blocked"} 1' in metrics


def test_action_flag_and_its_deprecated_mode_alias(capsys):
    from conscience.cli import build_parser
    from conscience.errors import ConscienceError
    from conscience.serving.cli import serve_config

    parse = build_parser().parse_args
    assert serve_config(parse(["serve"])).action == "revise"
    assert serve_config(parse(["serve", "--action", "block"])).action == "block"
    assert "deprecated" not in capsys.readouterr().err
    assert serve_config(parse(["serve", "--mode", "monitor"])).action == "monitor"  # the old flag, for one release
    assert "--mode is deprecated" in capsys.readouterr().err
    assert serve_config(parse(["serve", "--use", "code", "--action", "monitor"])).action == "monitor"
    with pytest.raises(ConscienceError, match="disagree"):
        serve_config(parse(["serve", "--action", "block", "--mode", "monitor"]))
    with pytest.raises(SystemExit):
        parse(["serve", "--action", "poetry"])


def test_revise_flagged_local(lm):
    reviewer = ScriptedReviewer((0.1, 0.9))
    with TestClient(app_for(lm, ServeConfig(expose_trace=True), reviewer)) as http:
        reply = openai_client(http).chat.completions.create(model="tiny", messages=ASK)
        note = reply.model_extra["conscience"]
        assert note["flagged"] is True and note["revised"] is True and note["score"] == 0.1
        assert note["final_score"] == 0.9 and note["rounds"] == 1
        assert reply.choices[0].message.content == note["alternatives"][0]["answer"]
        assert note["alternatives"][0]["score"] == 0.9 and note["draft_verdict"]["score"] == 0.1
        assert "conscience_revised_total 1" in http.get("/metrics").text


@pytest.mark.parametrize("failure", ["raises", "times out"])
def test_failed_check_never_releases_the_draft(lm, failure):
    reviewer = ScriptedReviewer((0.9,), fail={1}) if failure == "raises" else ScriptedReviewer((0.9,), sleep=3.0)
    serve = ServeConfig(action="monitor", on_error="closed", review_timeout=0.5, expose_trace=True)
    with TestClient(app_for(lm, serve, reviewer)) as http:
        body = http.post("/v1/chat/completions", json={"messages": ASK}).json()
        assert body["choices"][0]["message"]["content"] == WITHHELD_CHECK_FAILED
        assert body["choices"][0]["finish_reason"] == "content_filter"
        note = body["conscience"]
        assert note["status"] == "check_failed" and note["score"] is None and "draft" not in note
        assert ("timeout" in note["error"]) == (failure == "times out")
        assert "conscience_checker_failures_total 1" in http.get("/metrics").text
        if failure == "times out":  # the overrunning review keeps the model until it ends
            deadline = time.time() + 10
            while app_busy(http) and time.time() < deadline:
                time.sleep(0.05)
        # the next request is reviewed normally (after a timed-out review has finished)
        again = http.post("/v1/chat/completions", json={"messages": ASK}).json()
        assert again["conscience"]["status"] == "checked" and again["conscience"]["score"] == 0.9
        assert WITHHELD_CHECK_FAILED not in body["conscience"].get("draft", "")
        released = again["choices"][0]["message"]["content"]
        assert released and released not in json.dumps(body)  # the withheld draft was this same text


def app_busy(http: TestClient) -> bool:
    guard = http.app.state.engine._guard
    return guard is not None and guard.busy


def test_on_error_open_releases_marked_unchecked(lm):
    serve = ServeConfig(action="revise", on_error="open")
    with TestClient(app_for(lm, serve, ScriptedReviewer(fail={1}))) as http:
        body = http.post("/v1/chat/completions", json={"messages": ASK}).json()
        assert body["conscience"]["status"] == "unchecked" and body["conscience"]["score"] is None
        assert body["choices"][0]["message"]["content"] not in ("", WITHHELD_CHECK_FAILED)


BAD_BODIES = [
    ({}, "messages"),
    ({"messages": "hi"}, "messages"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "messages"),
    ({"messages": ASK, "max_tokens": 0}, "max_tokens"),
    ({"messages": ASK, "max_tokens": 10**9}, "max_tokens"),
    ({"messages": ASK, "temperature": "hot"}, "temperature"),
    ({"messages": ASK, "n": 2}, "n"),
    ({"messages": ASK, "stream": "yes"}, "stream"),
    ({"messages": ASK, "logprobs": True}, "logprobs"),  # the revise action may replace the draft
    ([1, 2], None),
]


def test_malformed_requests_get_400_in_openai_shape(lm):
    with TestClient(app_for(lm, ServeConfig(max_body_bytes=2000, max_prompt_tokens=50))) as http:
        for body, param in BAD_BODIES:
            reply = http.post("/v1/chat/completions", json=body)
            assert reply.status_code == 400, body
            error = reply.json()["error"]
            assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
        assert http.post("/v1/chat/completions", content=b"\xff\xfe",
                         headers={"Content-Type": "application/json"}).status_code == 400
        big = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x" * 5000}]})
        assert big.status_code == 413 and big.json()["error"]["code"] == "body_too_large"
        long = http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "wishes " * 200}]})
        assert long.status_code == 400 and long.json()["error"]["code"] == "context_length_exceeded"
        assert http.get("/v1/nothing").json()["error"]["type"] == "not_found_error"
        assert http.get("/health").json()["status"] == "ok"


def test_api_key_guards_v1_only(lm):
    with TestClient(app_for(lm, ServeConfig(api_key="s3cret"))) as http:
        assert http.get("/v1/models").status_code == 401
        assert http.get("/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert http.get("/health").status_code == 200 and "<title>conscience chat</title>" in http.get("/").text
        assert http.get("/static/app.js").status_code == 200


def test_verdict_from_top_logprobs():
    top = [{"token": " Yes", "logprob": math.log(0.5)}, {"token": "yes", "logprob": math.log(0.1)},
           {"token": "No", "logprob": math.log(0.2)}, {"token": "Maybe", "logprob": math.log(0.1)}]
    p, lp_a, lp_m = verdict_from_top_logprobs(top, "Yes", "No")
    assert p == pytest.approx(0.6 / 0.8) and lp_a == pytest.approx(math.log(0.6)) and lp_m == pytest.approx(math.log(0.2))
    # a missing answer word is no verdict: the review fails (fail-closed), it is never scored
    with pytest.raises(UpstreamError, match="'Yes' not among"):
        verdict_from_top_logprobs(top[2:], "Yes", "No")
    with pytest.raises(UpstreamError):
        verdict_from_top_logprobs([{"token": "Maybe", "logprob": -0.1}], "Yes", "No")
    p, _, _ = verdict_from_top_logprobs([{"token": "Good", "logprob": -1.0}, {"token": " bad", "logprob": -1.0}], "Good", "Bad")
    assert p == pytest.approx(0.5)


# -- learning from traffic ------------------------------------------------------------------------
pairs_module = pytest.importorskip("conscience.pairs")


def _response(prompt: str, draft_score: float, alt_score: float) -> Response:
    def cand(k, text, score):
        return Candidate(k, text, text, None, Verdict(score=score, flagged=score < 0.5, framing="aligned"), 0.0)

    return Response(prompt, "chat", [cand(0, f"bad answer to {prompt}", draft_score),
                                     cand(1, f"good answer to {prompt}", alt_score)], 1, 0.5)


class FakeBackend:
    def __init__(self):
        self.swapped = []

    def swap(self, lm):
        self.swapped.append(lm)


def _learner(tmp_path, probe_scores, every=2):
    from conscience.serving.learn import Learner

    trained = []

    def train(pairs, out_dir):
        trained.append(len(pairs))
        out_dir.mkdir(parents=True)
        return out_dir

    learner = Learner(ServeConfig(learn=True, learn_dir=str(tmp_path), learn_every=every, learn_margin=0.2),
                      train, load=lambda adapter: ("model", adapter), probe=lambda lm: probe_scores[lm[1] is not None])
    learner.backend = FakeBackend()
    return learner, trained


def test_pairs_survive_a_restart(tmp_path):
    learner, _ = _learner(tmp_path, {False: 0.5, True: 0.5}, every=100)
    learner.observe([_response("q1", 0.1, 0.9), _response("q2", 0.4, 0.5), _response("q3", 0.2, 0.8)])
    assert learner.n_pairs == 2  # q2's alternative does not beat the draft by the margin
    with open(tmp_path / "pairs.jsonl", "a") as fh:
        fh.write('{"prompt": "torn')  # a crash in the middle of a write
    again, _ = _learner(tmp_path, {False: 0.5, True: 0.5}, every=100)
    pairs = again.store.load()
    assert again.n_pairs == 2 and [p.prompt for p in pairs] == ["q1", "q3"]
    assert pairs[0].chosen == "good answer to q1" and pairs[0].rejected == "bad answer to q1"
    again.observe([_response("q4", 0.1, 0.9)])
    assert [p.prompt for p in again.store.load()] == ["q1", "q3", "q4"]


def test_a_worse_adapter_is_not_swapped_in(tmp_path):
    learner, trained = _learner(tmp_path, {False: 0.8, True: 0.3})  # the candidate probes worse
    learner.observe([_response("q1", 0.1, 0.9), _response("q2", 0.1, 0.9)])
    learner._thread.join(timeout=30)
    assert trained == [2] and learner.backend.swapped == []
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["active"] is None and state["updates"][0]["swapped"] is False
    assert state["pairs_at_last_update"] == 2 and not learner.maybe_update()  # not due again yet


def test_a_better_adapter_is_swapped_in_and_can_roll_back(tmp_path):
    learner, _ = _learner(tmp_path, {False: 0.3, True: 0.8})
    learner.observe([_response("q1", 0.1, 0.9), _response("q2", 0.1, 0.9)])
    learner._thread.join(timeout=30)
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["active"].endswith("adapters/0001") and state["previous"] is None
    assert learner.backend.swapped == [("model", state["active"])]
    assert learner.rollback() is None and learner.backend.swapped[-1] == ("model", None)
    assert json.loads((tmp_path / "state.json").read_text())["previous"].endswith("0001")


class ScriptedWriter:
    """A generator that writes numbered answers (the tiny random model often repeats its draft verbatim)."""

    lm = None
    written = 0

    def generate(self, chats, sampling, keep_cache=False):
        from conscience.generation import Generation

        out = []
        for _ in chats:
            ScriptedWriter.written += 1
            text = f"answer number {ScriptedWriter.written}"
            out.append(Generation(text, text, None, 3, 0.0))
        return out


def test_learning_records_pairs_from_served_traffic(lm, tmp_path):
    from conscience.serving.learn import Learner

    serve = ServeConfig(learn=True, learn_dir=str(tmp_path), learn_every=1000, learn_margin=0.5)
    for expected in (1, 2):  # a restart keeps the pairs recorded before it
        reviewer = ScriptedReviewer((0.1, 0.9))
        backend = LocalBackend(lm, lambda m, reviewer=reviewer: Conscience(ScriptedWriter(), reviewer=reviewer, max_rounds=1),
                               "tiny")
        app = create_app(dataclasses.replace(serve, allowed_hosts=("testserver",)), backend,
                         Learner(serve, train=None, load=None, probe=None))
        with TestClient(app) as http:
            assert http.post("/v1/chat/completions", json={"messages": ASK}).json()["conscience"]["revised"]
            assert http.get("/health").json()["learning"]["pairs"] == expected
        assert "conscience_pairs_total 1" in app.state.metrics.render()
    pairs = pairs_module.PairStore(tmp_path / "pairs.jsonl").load()
    assert [p.source for p in pairs] == ["traffic", "traffic"] and pairs[0].chosen_score == 0.9


def test_real_update_trains_probes_and_records_the_decision(tmp_path):
    """The default learner end to end on the tiny model: train_on_pairs writes an adapter,
    both models are probed, and the decision is recorded (swapped only if not worse)."""
    from conscience.conscience_config import ConscienceConfig
    from conscience.serving.backends import build_backend
    from conscience.serving.learn import build_learner

    serve = ServeConfig(learn=True, learn_dir=str(tmp_path), learn_every=2, learn_steps=2, learn_margin=0.2,
                        probe_size=2)
    conscience_cfg = ConscienceConfig(model="tiny", max_new_tokens=4, verdict="verbal")
    backend = build_backend(serve, conscience_cfg)
    learner = build_learner(serve, conscience_cfg, backend)
    learner.backend = FakeBackend()
    learner.observe([_response("q1", 0.1, 0.9), _response("q2", 0.1, 0.9)])
    learner._thread.join(timeout=300)
    state = json.loads((tmp_path / "state.json").read_text())
    update = state["updates"][0]
    assert (tmp_path / "adapters" / "0001" / "adapter_config.json").exists()
    assert update["swapped"] == (update["probe_new"] >= update["probe_old"])  # swapped only if not worse
    assert len(learner.backend.swapped) == int(update["swapped"])  # a swap happens exactly when recorded
    assert (state["active"] is not None) == update["swapped"]
