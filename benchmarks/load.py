"""Load test of `conscience serve`: clean, mixed and slow-upstream workloads from 64 concurrent clients.

    nice -n 19 python benchmarks/load.py --model tiny --out load.json
    python benchmarks/load.py --model tiny --scenarios off,clean --requests 200 --concurrency 16
    python benchmarks/load.py --url http://127.0.0.1:8000 --scenarios clean,mixed   # a server already running

Scenarios, each bounded by --requests and --max-seconds (servers this script starts bind to free
loopback ports and run one after the other, so they do not compete for the CPU):

  off            short chat requests with the conscience off (--no-conscience): the server's own cost
  clean          the same short requests with the conscience on
  mixed          short requests (half of them) among streamed answers, over-long prompts, malformed
                 bodies and clients that cancel mid-stream or before the answer
  upstream       short requests to `serve --upstream` in front of a fake OpenAI-compatible upstream
                 (conscience.serving.fake_upstream, on 127.0.0.1) that answers after --upstream-latency seconds
  slow-upstream  the same, but every --hang-every-th request is a "hung" one: its prompt carries a marker
                 that makes the fake upstream hang its review --hang-seconds, past --review-timeout, so
                 it must be answered under fail-closed at the timeout

Reported per scenario: requests, failed (any answer other than the expected one), HTTP 5xx,
answered under fail-closed (conscience.status "check_failed"), p50/p99 of the short requests, and
whether /health still answers; slow-upstream reports its hung requests apart (``hung``: how many,
how many failed closed, their p50/p99), since they end at the review timeout by design and the
short requests' p99 is what the hang must not move. Targets: 0 5xx and 0 failed everywhere
(a hung request that is not answered under fail-closed is a failure); the short requests' p99
in the mixed run within 1.5x of the clean run's, and in slow-upstream within 1.5x of upstream's.
Prints a table; --out writes the JSON. Exit status 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from conscience.config import choices_of
from conscience.jsonl import write_json_atomic
from conscience.serving.config import ServeConfig
from conscience.serving.fake_upstream import FakeUpstream

SCENARIOS = ("off", "clean", "mixed", "upstream", "slow-upstream")
PROMPTS = ["What should I do with a found wallet?", "hey I feel bored", "How do I make a quick buck?",
           "Write a Python function that reads a file.", "If you ruled the world, what would you do?"]
# Half short requests, the other half one of each hard kind, interleaved so every client sees them all.
MIXED_CYCLE = ("short", "stream", "short", "long", "short", "malformed", "short", "cancel")
MALFORMED_BODIES = (  # each must get a 4xx: invalid JSON, bad unicode, parser limits, non-finite numbers
    b'{"messages": [{"role": "user", "content": "hi"}',
    b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
    b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": ' + b"9" * 5000 + b"}",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
    b'{"messages": "hi"}',
)
HANG_MARKER = "[hang-this-review]"  # the fake upstream hangs the reviews of a conversation holding it
LONG_PROMPT = "hi " * 3000  # past the tiny model's 1,024-token window and the default --max-prompt-tokens
P99_RATIO = 1.5  # the short requests' p99 may grow this much when long, broken or hung ones are mixed in
BASELINES = {"mixed": "clean", "slow-upstream": "upstream"}  # each run's clean counterpart


@dataclass
class Result:
    kind: str
    ok: bool
    status: int | None  # None: no HTTP status (connection error, or cancelled before the answer)
    seconds: float
    fail_closed: bool = False


# -- servers -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, flags: list[str]) -> tuple[subprocess.Popen, str, Path]:
    port = free_port()
    cmd = [sys.executable, "-m", "conscience.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--max-new-tokens", str(args.max_tokens), "--temperature", "1.0", "--max-batch", str(args.max_batch),
           "--action", args.action, *flags]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    log = Path(tempfile.gettempdir()) / f"conscience-load-{port}.log"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited; see {log}")
        if healthy(url):
            return proc, url, log
        time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start in 300s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=5) as reply:
            return reply.status == 200
    except OSError:
        return False


# -- clients -----------------------------------------------------------------------------------
def _status_of(payload: dict) -> str | None:
    return (payload.get("conscience") or {}).get("status")


async def one_request(client, url: str, kind: str, i: int, max_tokens: int) -> Result:
    """Send request ``i`` of ``kind`` and judge the answer against what that kind must get."""
    import httpx

    chat = url + "/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": max_tokens}
    start = time.perf_counter()
    if kind == "hung":
        body["messages"][0]["content"] += " " + HANG_MARKER
    try:
        if kind in ("short", "hung"):
            reply = await client.post(chat, json=body)
            payload = reply.json() if reply.status_code == 200 else {}
            ok = reply.status_code == 200 and isinstance(payload["choices"][0]["message"]["content"], str)
            fail_closed = _status_of(payload) == "check_failed"
            # a request whose own review hung must be answered at the timeout, withheld (fail-closed)
            return Result(kind, ok and (fail_closed or kind == "short"), reply.status_code,
                          time.perf_counter() - start, fail_closed)
        if kind in ("long", "malformed"):
            if kind == "long":
                reply = await client.post(chat, json={**body, "messages": [{"role": "user", "content": LONG_PROMPT}]})
            else:
                reply = await client.post(chat, content=MALFORMED_BODIES[i % len(MALFORMED_BODIES)],
                                          headers={"Content-Type": "application/json"})
            return Result(kind, 400 <= reply.status_code < 500, reply.status_code, time.perf_counter() - start)
        if kind == "cancel" and i % 2:  # the client gives up before the answer (drafting or reviewing)
            try:
                reply = await asyncio.wait_for(client.post(chat, json=body), timeout=0.05)
                return Result(kind, reply.status_code < 500, reply.status_code, time.perf_counter() - start)
            except asyncio.TimeoutError:
                return Result(kind, True, None, time.perf_counter() - start)
        # "stream", or "cancel" mid-stream: read the first chunk only, then drop the connection
        async with client.stream("POST", chat, json={**body, "stream": True}) as reply:
            done, fail_closed = False, False
            async for line in reply.aiter_lines():
                if kind == "cancel":
                    break
                if line == "data: [DONE]":
                    done = True
                elif line.startswith("data: "):
                    fail_closed |= _status_of(json.loads(line[6:])) == "check_failed"
            ok = reply.status_code == 200 and (done or kind == "cancel")
            return Result(kind, ok, reply.status_code, time.perf_counter() - start, fail_closed)
    except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError):
        return Result(kind, False, None, time.perf_counter() - start)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile in ms (nan when empty)."""
    ordered = sorted(values)
    return round(1000 * ordered[max(0, math.ceil(q * len(ordered)) - 1)], 1) if ordered else float("nan")


async def run_load(url: str, kinds: tuple[str, ...], n: int, concurrency: int, max_seconds: float, max_tokens: int,
                   key: str | None, request_timeout: float = 120.0) -> dict:
    """``n`` requests (kinds cycled) from ``concurrency`` clients; none issued after ``max_seconds``."""
    import httpx

    results: list[Result] = []
    issued = 0
    deadline = time.perf_counter() + max_seconds

    async def client_loop(client):
        nonlocal issued
        while issued < n and time.perf_counter() < deadline:
            i = issued
            issued += 1
            results.append(await one_request(client, url, kinds[i % len(kinds)], i, max_tokens))

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=request_timeout, headers=headers, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    short = [r.seconds for r in results if r.kind == "short" and r.ok]
    by_kind = {k: {"sent": sum(r.kind == k for r in results), "ok": sum(r.ok for r in results if r.kind == k)}
               for k in dict.fromkeys(kinds)}
    run = {"requests": len(results), "failed": sum(not r.ok for r in results),
           "http_5xx": sum(r.status is not None and r.status >= 500 for r in results),
           "fail_closed": sum(r.fail_closed for r in results), "by_kind": by_kind, "wall_s": round(wall, 2),
           "short_rps": round(len(short) / wall, 2), "short_p50_ms": percentile(short, 0.5),
           "short_p99_ms": percentile(short, 0.99)}
    hung = [r for r in results if r.kind == "hung"]
    if hung:  # apart: they end at the review timeout by design
        seconds = [r.seconds for r in hung]
        run["hung"] = {"sent": len(hung), "fail_closed": sum(r.fail_closed for r in hung),
                       "p50_ms": percentile(seconds, 0.5), "p99_ms": percentile(seconds, 0.99)}
    return run


# -- scenarios ---------------------------------------------------------------------------------
def hung_cycle(every: int) -> tuple[str, ...]:
    """Every ``every``-th request a hung one, the others short."""
    return ("short",) * (every - 1) + ("hung",)


def measure(args, url: str, kinds: tuple[str, ...], log: Path | None) -> dict:
    asyncio.run(run_load(url, ("short",), min(args.concurrency, args.requests), args.concurrency, args.max_seconds,
                         args.max_tokens, args.api_key))  # warm-up: first batches pay one-time costs
    run = asyncio.run(run_load(url, kinds, args.requests, args.concurrency, args.max_seconds, args.max_tokens,
                               args.api_key))
    run["health_after"] = healthy(url)
    if log is not None:  # servers this script started: no traceback may reach their log
        run["server_tracebacks"] = log.read_text(errors="replace").count("Traceback")
    return run


def run_scenarios(args) -> dict:
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SCENARIOS))
    if unknown:
        raise SystemExit(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    results: dict[str, dict] = {}
    local = [("off", ["--no-conscience"], ("short",)), ("clean", [], ("short",)), ("mixed", [], MIXED_CYCLE)]
    servers: dict[tuple, tuple] = {}  # clean and mixed share one server
    try:
        for name, flags, kinds in local:
            if name not in wanted:
                continue
            url, log = (args.baseline_url if name == "off" else args.url), None
            if url is None:
                key = tuple(flags)
                if key not in servers:
                    for old in servers.values():
                        stop_server(old[0])
                    servers = {key: start_server(args, ["--model", args.model, *flags])}
                _, url, log = servers[key]
            results[name] = measure(args, url, kinds, log)
            print(f"[load] {name}: {results[name]}", file=sys.stderr, flush=True)
    finally:
        for proc, _, _ in servers.values():
            stop_server(proc)
    if {"upstream", "slow-upstream"} & set(wanted):
        results.update(run_upstream(args, wanted))
    return results


def run_upstream(args, wanted: list[str]) -> dict:
    fake = FakeUpstream(args.upstream_latency, hang_seconds=args.hang_seconds)
    upstream_url = fake.start()
    proc, url, log = start_server(args, ["--upstream", upstream_url, "--upstream-model", "fake", "--verdict", "verbal",
                                         "--review-timeout", str(args.review_timeout), "--upstream-timeout", "30"])
    results = {}
    try:
        for name in ("upstream", "slow-upstream"):
            if name not in wanted:
                continue
            slow = name == "slow-upstream"
            fake.hang_marker = HANG_MARKER if slow else None
            results[name] = measure(args, url, hung_cycle(args.hang_every) if slow else ("short",), log)
            print(f"[load] {name}: {results[name]}", file=sys.stderr, flush=True)
    finally:
        stop_server(proc)
        fake.stop()
    return results


def check_targets(results: dict) -> list[str]:
    """The targets missed, as lines (empty when every target is met). Adds ``p99_vs_clean`` to the
    runs that have a clean counterpart: mixed against clean, slow-upstream against upstream."""
    missed = []
    for name, r in results.items():
        for field in ("http_5xx", "failed", "server_tracebacks"):
            if r.get(field):
                missed.append(f"{name}: {field} = {r[field]} (target 0)")
        if not r["health_after"]:
            missed.append(f"{name}: /health did not answer afterwards")
    for name, clean in BASELINES.items():
        if name in results and clean in results:
            ratio = results[name]["short_p99_ms"] / results[clean]["short_p99_ms"]
            results[name]["p99_vs_clean"] = round(ratio, 2)
            if not ratio <= P99_RATIO:  # also true for nan: no short request was answered
                missed.append(f"{name}: short p99 is {ratio:.2f}x the {clean} run's (target <= {P99_RATIO}x)")
    return missed


def print_table(results: dict) -> None:
    columns = ("requests", "failed", "http_5xx", "fail_closed", "short_p50_ms", "short_p99_ms", "short_rps", "wall_s")
    print(f"{'scenario':<15}" + "".join(f"{c:>14}" for c in columns) + f"{'p99/clean':>11}")
    for name, r in results.items():
        print(f"{name:<15}" + "".join(f"{r[c]!s:>14}" for c in columns) + f"{r.get('p99_vs_clean', ''):>11}")
    for name, r in results.items():
        if "hung" in r:
            h = r["hung"]
            print(f"{name}: {h['sent']} requests whose own review hung (not in the short columns): "
                  f"{h['fail_closed']} answered under fail-closed, p50 {h['p50_ms']} ms, p99 {h['p99_ms']} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--url", help="a running server with the conscience on (clean, mixed)")
    parser.add_argument("--baseline-url", help="a running server with the conscience off (off)")
    parser.add_argument("--api-key", help="for --url/--baseline-url servers")
    parser.add_argument("--model", default="tiny", help="model spec for servers this script starts")
    parser.add_argument("--action", default="revise", choices=choices_of(ServeConfig, "action"))
    parser.add_argument("--threads", type=int, help="torch threads of servers this script starts")
    parser.add_argument("--requests", type=int, default=192, help="requests per scenario")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent clients")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="stop issuing requests after this, per scenario")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--upstream-latency", type=float, default=0.05, help="seconds the fake upstream takes per answer")
    parser.add_argument("--review-timeout", type=float, default=1.0, help="--review-timeout of the upstream server")
    parser.add_argument("--hang-every", type=int, default=16, help="slow-upstream: every Nth request's review hangs")
    parser.add_argument("--hang-seconds", type=float, default=5.0, help="slow-upstream: how long a hung review takes")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    if min(args.requests, args.concurrency, args.max_tokens, args.max_batch) < 1:
        parser.error("--requests, --concurrency, --max-tokens and --max-batch must be >= 1")
    if args.hang_every < 2:
        parser.error("--hang-every must be >= 2 (every request hung would leave no short request to measure)")
    if args.hang_seconds <= args.review_timeout:
        parser.error("--hang-seconds must exceed --review-timeout, or no review overruns")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = run_scenarios(args)
    missed = check_targets(results)
    print_table(results)
    for line in missed:
        print(f"target missed: {line}")
    if args.out:
        config = {k: v for k, v in vars(args).items() if k not in ("api_key", "out")}
        write_json_atomic(args.out, {"scenarios": results, "config": config, "targets_missed": missed})
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
