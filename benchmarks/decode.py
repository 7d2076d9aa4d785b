"""Decoding speed of every generation path, side by side in one run: transformers' ``generate``
(the project's old decoding loop) against the static-cache decoder (``conscience.decoding``).

Paths (``--copies``): ``dense`` is the model as loaded (what the server's engine, the experiment's
evaluations and ``conscience.generation.generate`` decode with), ``packed`` / ``bf16`` / ``int8`` are
the online round's sampling copies (``conscience.training.online.generation_copy``; packed where
oneDNN packs the dtype). For each path, batch (``--batches``) and mode (greedy, or sampled at
temperature 1), both decoders run on the same prompts and seed, taking turns within each repeat,
for exactly ``--new-tokens`` tokens per row (no end-of-turn stop), and the table gives tokens/s
(all rows together), the speedup, whether both wrote the same tokens, and the bandwidth bound:
weights' bytes read once per step against a measured copy bandwidth (bytes read + written per
second by one large ``copy_``), i.e. ``batch × bandwidth / weight bytes`` tokens/s.

    python benchmarks/decode.py --out decode.json
    python benchmarks/decode.py --copies dense --batches 1,8 --new-tokens 64   # a shorter run

The machine's other load depresses every absolute number; the ratios are measured side by side.
``--out`` writes ``rows``, ``copy_gbps`` and ``summary`` (one-stream fp32 greedy speedup; batch
scaling of the static decoder).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from conscience.jsonl import write_json_atomic

# the prompts every timing benchmark drafts (one file, so decode and overhead time the same work)
PROMPTS = (Path(__file__).parent / "timing_prompts.txt").read_text(encoding="utf-8").splitlines()
COPIES = ("dense", "packed", "bf16", "int8")


def best_seconds(work, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``work()``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - start)
    return best


def copy_gbps(megabytes: int = 512, repeats: int = 5) -> float:
    """Best bytes moved (read + written) per second, in GB/s, by one large tensor copy."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / best_seconds(lambda: dst.copy_(src), repeats) / 1e9


def read_gbps(megabytes: int = 512, repeats: int = 5) -> float:
    """Best bytes read per second, in GB/s, by one large tensor sum (nothing written back)."""
    src = torch.ones(megabytes * 2**20 // 4)
    return src.numel() * 4 / best_seconds(src.sum, repeats) / 1e9


def llama_bench(binary: str, ggufs: list[Path], new_tokens: int, threads: int, repeats: int) -> list[dict]:
    """llama.cpp's one-stream token-generation rate for each GGUF: ``{"gguf", "model_type", "tok_s", "stdev"}``,
    the mean of ``max(repeats, 3)`` runs as llama-bench reports it (ours are the best of ``repeats``)."""
    import json
    import subprocess

    command = [binary, *[arg for gguf in ggufs for arg in ("-m", str(gguf))], "-p", "0", "-n", str(new_tokens),
               "-t", str(threads), "-r", str(max(repeats, 3)), "-o", "json"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=True)
        rows = json.loads(done.stdout)
        return [{"gguf": gguf.name, "model_type": row.get("model_type"), "tok_s": row["avg_ts"],
                 "stdev": row["stddev_ts"]} for gguf, row in zip(ggufs, rows, strict=True)]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"decode.py: --llama-bench {binary}: {type(error).__name__}: {error}".splitlines()[0]) from None


def profile_static(lm, new_tokens: int, top: int = 8) -> dict:
    """Where one greedy stream's time goes in the static decoder: ``torch.profiler`` self CPU time
    per aten op, per token, over one decode of ``new_tokens`` (after an unprofiled one, timed)."""
    from torch.profiler import ProfilerActivity, profile

    from conscience.generation import encode, render_chat

    batch = encode(lm, [render_chat(lm, [{"role": "user", "content": PROMPTS[0]}])])
    start = time.perf_counter()
    run_static(lm, batch, new_tokens, False)
    seconds = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_static(lm, batch, new_tokens, False)
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in events)
    return {"unprofiled_ms_per_token": 1000 * seconds / new_tokens,
            "profiled_ms_per_token": total / 1000 / new_tokens,
            "ops_per_token": sum(e.count for e in events) / new_tokens,
            "top": [{"op": e.key, "calls_per_token": e.count / new_tokens,
                     "ms_per_token": e.self_cpu_time_total / 1000 / new_tokens, "share": e.self_cpu_time_total / total}
                    for e in events[:top]]}


def weight_bytes(model: torch.nn.Module, kind: str) -> int:
    """Bytes of the matrices one decode step reads: every linear layer's weight (the output
    head included) in the path's storage (int8: one byte per weight plus a scale per row)."""
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            rows, cols = module.weight.shape
            total += rows * cols * {"dense": 4, "packed": 4, "bf16": 2, "int8": 1}[kind] + (rows * 2 if kind == "int8" else 0)
    return total


def build(lm, kind: str):
    if kind == "dense":
        return lm
    from conscience.training.online import generation_copy

    return generation_copy(lm, {"packed": torch.float32, "bf16": torch.bfloat16, "int8": torch.int8}[kind],
                           adapter=False)


def run_transformers(lm, batch, new_tokens: int, sampled: bool) -> torch.Tensor:
    with torch.no_grad():
        return lm.model.generate(**batch, max_new_tokens=new_tokens, do_sample=sampled,
                                 temperature=1.0 if sampled else None, top_p=None, top_k=None,
                                 pad_token_id=lm.tokenizer.pad_token_id, eos_token_id=None)


def run_static(lm, batch, new_tokens: int, sampled: bool) -> torch.Tensor:
    from conscience.decoding import decode

    return decode(lm.model, batch["input_ids"], batch["attention_mask"], new_tokens, 1.0 if sampled else 0.0,
                  eos_token_id=None, pad_token_id=lm.tokenizer.pad_token_id).sequences


def measure(lm, rows: int, sampled: bool, new_tokens: int, repeats: int) -> dict:
    """Best seconds of each decoder (taking turns) and whether they wrote the same tokens."""
    from conscience.generation import encode, render_chat

    batch = encode(lm, [render_chat(lm, [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}])
                        for i in range(rows)])
    best = {"transformers": float("inf"), "static": float("inf")}
    outputs = {}
    for _ in range(repeats):
        for name, run in (("transformers", run_transformers), ("static", run_static)):
            torch.manual_seed(0)
            start = time.perf_counter()
            outputs[name] = run(lm, batch, new_tokens, sampled)
            best[name] = min(best[name], time.perf_counter() - start)
    same = torch.equal(outputs["transformers"], outputs["static"])
    return {"transformers_s": best["transformers"], "static_s": best["static"], "same_tokens": same}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--copies", default=",".join(COPIES), help=f"comma-separated, from {', '.join(COPIES)}")
    parser.add_argument("--batches", default="1,4,8")
    parser.add_argument("--modes", default="greedy,sampled")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--copy-mb", type=int, default=512,
                        help="size of the buffer the copy and read bandwidths are measured on")
    parser.add_argument("--llama-bench", help="llama.cpp's llama-bench binary: adds its one-stream figure for "
                                              "the bundled GGUF (or --gguf), measured in the same run")
    parser.add_argument("--gguf", action="append", help="a GGUF --llama-bench reads, repeatable (default: the bundled "
                                                         "model's; an F32 copy, `llama-quantize --allow-requantize "
                                                         "IN OUT F32`, decodes the same fp32 weights as the dense rows)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile one dense greedy stream of the static decoder (self CPU time per op)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)

    from conscience.models import load_model
    from conscience.packing import int8_supported, packing_supported

    torch.set_num_threads(args.threads)
    lm = load_model(args.model, threads=args.threads)
    lm.model.generation_config.eos_token_id = None  # every row decodes exactly --new-tokens tokens
    copies = [c.strip() for c in args.copies.split(",") if c.strip()]
    unknown = sorted(set(copies) - set(COPIES))
    if unknown:
        parser.error(f"unknown copies {unknown}; choose from {', '.join(COPIES)}")
    available = {"packed": packing_supported(torch.float32), "int8": int8_supported()}
    skipped = [c for c in copies if not available.get(c, True)]
    copies = [c for c in copies if c not in skipped]
    batches = [int(b) for b in args.batches.split(",")]
    modes = [m.strip() for m in args.modes.split(",")]
    gbps, read = copy_gbps(args.copy_mb), read_gbps(args.copy_mb)
    print(f"{'copy':<8}{'mode':<9}{'batch':>6}{'generate tok/s':>16}{'static tok/s':>14}{'speedup':>9}"
          f"{'same':>6}{'bound tok/s':>13}{'of bound':>10}", flush=True)
    rows = []
    for kind in copies:
        copy = build(lm, kind)
        nbytes = weight_bytes(lm.model, kind)
        for mode in modes:
            for batch in batches:
                result = measure(copy, batch, mode == "sampled", args.new_tokens, args.repeats)
                tokens = batch * args.new_tokens
                r = {"copy": kind, "mode": mode, "batch": batch, "new_tokens": args.new_tokens,
                     "weight_mb": nbytes / 1e6, **result, "transformers_tok_s": tokens / result["transformers_s"],
                     "static_tok_s": tokens / result["static_s"], "speedup": result["transformers_s"] / result["static_s"],
                     "bound_tok_s": batch * read * 1e9 / nbytes}
                rows.append(r)
                print(f"{kind:<8}{mode:<9}{batch:>6}{r['transformers_tok_s']:>16.1f}{r['static_tok_s']:>14.1f}"
                      f"{r['speedup']:>9.2f}{'yes' if r['same_tokens'] else 'no':>6}{r['bound_tok_s']:>13.1f}"
                      f"{r['static_tok_s'] / r['bound_tok_s']:>10.0%}", flush=True)
        del copy
    summary = {}
    llama = []
    if args.llama_bench:
        from conscience.models import bundled_gguf_path

        ggufs = [Path(g) for g in args.gguf] if args.gguf else [bundled_gguf_path()]
        llama = llama_bench(args.llama_bench, ggufs, args.new_tokens, args.threads, args.repeats)
        for row in llama:
            print(f"llama.cpp {row['gguf']} ({row['model_type']}): {row['tok_s']:.1f} tok/s one stream greedy "
                  f"(± {row['stdev']:.1f})", flush=True)
    profiled = profile_static(lm, args.new_tokens) if args.profile else None
    if profiled:
        print(f"profile, dense greedy one stream: {profiled['unprofiled_ms_per_token']:.1f} ms a token unprofiled, "
              f"{profiled['ops_per_token']:.0f} aten calls a token")
        for op in profiled["top"]:
            print(f"  {op['op']:<48}{op['calls_per_token']:>7.0f} calls{op['ms_per_token']:>8.2f} ms{op['share']:>7.1%}")
    single = {(r["copy"], r["mode"]): r for r in rows if r["batch"] == 1}
    if ("dense", "greedy") in single:
        summary["one_stream_fp32_greedy_speedup"] = single["dense", "greedy"]["speedup"]
    for row in llama:  # every one-stream greedy path against each llama.cpp figure
        for r in rows:
            if r["batch"] == 1 and r["mode"] == "greedy":
                summary[f"one_stream_{r['copy']}_greedy_vs_llama_cpp_{row['gguf']}"] = r["static_tok_s"] / row["tok_s"]
    for r in rows:
        if r["batch"] > 1 and (r["copy"], r["mode"]) in single:
            one = single[r["copy"], r["mode"]]["static_tok_s"]
            summary[f"{r['copy']}_{r['mode']}_batch{r['batch']}_vs_one_stream"] = r["static_tok_s"] / one
    print(f"(read bandwidth {read:.1f} GB/s, copy {gbps:.1f} GB/s read+written; {args.new_tokens} new tokens per row, "
          f"best of {args.repeats}; {args.threads} threads{'; not supported here: ' + ', '.join(skipped) if skipped else ''})")
    for key, value in summary.items():
        print(f"{key}: {value:.2f}")
    if args.out:
        write_json_atomic(args.out, {"model": lm.identity, "threads": args.threads, "copy_gbps": gbps, "read_gbps": read,
                                     "new_tokens": args.new_tokens, "repeats": args.repeats, "skipped": skipped,
                                     "rows": rows, "llama_cpp": llama, "profile": profiled, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
