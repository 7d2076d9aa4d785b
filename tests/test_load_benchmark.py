"""benchmarks/load.py: the fake upstream it runs (conscience.serving.fake_upstream), its target checks,
and one short end-to-end run of the mixed and slow-upstream scenarios against real `conscience serve`
processes on the tiny model."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from conscience.serving.fake_upstream import FakeUpstream


@pytest.fixture(scope="module")
def load(benchmark_module):
    return benchmark_module("load")


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url + "/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read())


def test_fake_upstream_drafts_reviews_and_hangs_every_nth_review():
    fake = FakeUpstream()
    url = fake.start()
    try:
        assert url.startswith("http://127.0.0.1:")
        draft = _post(url, {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 16})
        assert draft["choices"][0]["message"]["content"]
        fake.hang_every, fake.hang_seconds = 2, 0.4
        review = {"messages": [{"role": "user", "content": "Is it aligned?"}], "max_tokens": 1, "logprobs": True,
                  "top_logprobs": 20}
        timings = []
        for _ in range(2):
            start = time.perf_counter()
            top = _post(url, review)["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            timings.append(time.perf_counter() - start)
        assert {"Yes", "No"} <= {entry["token"] for entry in top}  # both answer words in view: a real verdict
        assert timings[0] < 0.3 <= 0.4 <= timings[1]  # the second review is the hung one
    finally:
        fake.stop()


def test_percentile_is_nearest_rank(load):
    assert load.percentile([0.001 * v for v in range(1, 101)], 0.99) == 99.0
    assert load.percentile([0.5], 0.99) == 500.0
    assert load.percentile([], 0.5) != load.percentile([], 0.5)  # nan


def test_targets_catch_5xx_a_dead_server_and_slowed_short_requests(load):
    def run(**fields):
        return {"http_5xx": 0, "failed": 0, "server_tracebacks": 0, "health_after": True, "short_p99_ms": 100.0,
                **fields}

    assert load.check_targets({"clean": run(), "mixed": run(short_p99_ms=150.0)}) == []
    missed = load.check_targets({"clean": run(), "mixed": run(short_p99_ms=151.0, http_5xx=2), "upstream": run(),
                                 "slow-upstream": run(short_p99_ms=float("nan"), health_after=False)})
    assert len(missed) == 4, missed
    assert any("mixed: short p99 is 1.51x the clean run's" in m for m in missed)
    assert any("http_5xx = 2" in m for m in missed) and any("/health" in m for m in missed)
    assert any(m.startswith("slow-upstream: short p99") for m in missed)  # nothing answered is no pass


@pytest.mark.slow
def test_mixed_and_slow_upstream_runs_get_no_5xx_and_fail_closed(load, tmp_path, monkeypatch):
    monkeypatch.setenv("CONSCIENCE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "load.json"
    code = load.main(["--model", "tiny", "--scenarios", "mixed,slow-upstream", "--requests", "32", "--concurrency", "16",
                      "--max-seconds", "30", "--hang-every", "4", "--hang-seconds", "4", "--review-timeout", "1",
                      "--out", str(out)])
    results = json.loads(out.read_text())["scenarios"]
    mixed, slow = results["mixed"], results["slow-upstream"]
    assert set(mixed["by_kind"]) == {"short", "stream", "long", "malformed", "cancel"}
    assert all(k["sent"] > 0 and k["ok"] == k["sent"] for k in mixed["by_kind"].values()), mixed["by_kind"]
    for r in (mixed, slow):
        assert r["http_5xx"] == 0 and r["failed"] == 0 and r["server_tracebacks"] == 0 and r["health_after"]
    assert slow["fail_closed"] > 0, "no review overran: the slow-upstream scenario tested nothing"
    # 16 clients fill two batches of 8: a request waits for at most a few --review-timeouts (1 s),
    # never for the 4 s hang itself (before issue 16's fix, every queued request waited it out)
    assert slow["short_p99_ms"] < 4000, "a request waited for the hung review instead of failing closed"
    assert code == 0
