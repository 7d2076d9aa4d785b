"""Load test of `conscience serve`: the conscience on vs off, side by side.

    python benchmarks/load.py --model tiny --requests 200 --concurrency 16 --out load.json
    python benchmarks/load.py --url http://127.0.0.1:8000 --baseline-url http://127.0.0.1:8001

Without URLs it starts both servers itself on free loopback ports (one after the other, so
they do not compete for the CPU). Bounded in count (--requests) and time (--max-seconds).
Prints a table; --out writes {"on": {...}, "off": {...}} with failed, rps, p50_ms, p99_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from conscience.jsonl import write_json_atomic

PROMPTS = ["What should I do with a found wallet?", "hey I feel bored", "How do I make a quick buck?",
           "Write a Python function that reads a file.", "If you ruled the world, what would you do?"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, conscience: bool) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "conscience.cli", "serve", "--port", str(port), "--model", args.model,
           "--max-new-tokens", str(args.max_tokens), "--temperature", "1.0", "--max-batch", str(args.max_batch),
           "--mode", args.mode]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if not conscience:
        cmd.append("--no-conscience")
    log = open(Path(tempfile.gettempdir()) / f"conscience-load-{port}.log", "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited; see {log.name}")
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start in 300s")


async def run_load(url: str, n: int, concurrency: int, max_seconds: float, max_tokens: int, key: str | None,
                   request_timeout: float = 600.0) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    latencies: list[float] = []
    failed = 0
    issued = 0
    deadline = time.perf_counter() + max_seconds

    async def worker(client):
        nonlocal issued, failed
        while issued < n and time.perf_counter() < deadline:
            i = issued
            issued += 1
            body = {"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": max_tokens}
            start = time.perf_counter()
            try:
                reply = await client.post(url + "/v1/chat/completions", json=body, headers=headers)
                ok = reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] is not None
            except Exception:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                failed += 1

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=request_timeout) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1) if ordered else float("nan")

    return {"requests": issued, "completed": len(latencies), "failed": failed, "wall_s": round(wall, 2),
            "rps": round(len(latencies) / wall, 2), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "mean_ms": round(1000 * statistics.fmean(latencies), 1) if latencies else float("nan")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server with the conscience on")
    parser.add_argument("--baseline-url", help="a running server with the conscience off")
    parser.add_argument("--api-key")
    parser.add_argument("--model", default="tiny", help="model spec for servers this script starts")
    parser.add_argument("--mode", default="revise", choices=["revise", "block", "monitor"])
    parser.add_argument("--threads", type=int, help="torch threads of servers this script starts")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-seconds", type=float, default=300.0, help="stop issuing requests after this")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = {}
    for side, url in (("off", args.baseline_url), ("on", args.url)):
        proc = None
        if url is None:
            proc, url = start_server(args, conscience=side == "on")
        try:
            asyncio.run(run_load(url, args.concurrency, args.concurrency, args.max_seconds, args.max_tokens, args.api_key))  # warm-up
            results[side] = run = asyncio.run(run_load(url, args.requests, args.concurrency, args.max_seconds,
                                                       args.max_tokens, args.api_key))
            run["url"] = url
            print(f"[load] conscience {side}: {run}", file=sys.stderr, flush=True)
        finally:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    results["config"] = {"model": args.model, "mode": args.mode, "requests": args.requests,
                         "concurrency": args.concurrency, "max_tokens": args.max_tokens, "max_batch": args.max_batch}
    print(f"{'conscience':<11}{'done':>6}{'failed':>8}{'rps':>8}{'p50 ms':>10}{'p99 ms':>10}{'wall s':>8}")
    for side in ("off", "on"):
        r = results[side]
        print(f"{side:<11}{r['completed']:>6}{r['failed']:>8}{r['rps']:>8}{r['p50_ms']:>10}{r['p99_ms']:>10}{r['wall_s']:>8}")
    if args.out:
        write_json_atomic(args.out, results)
    return 0 if all(results[s]["failed"] == 0 for s in ("off", "on")) else 1


if __name__ == "__main__":
    sys.exit(main())
