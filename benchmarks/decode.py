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


def copy_gbps(megabytes: int = 512, repeats: int = 5) -> float:
    """Best bytes moved (read + written) per second, in GB/s, by one large tensor copy."""
    src = torch.ones(megabytes * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


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
    parser.add_argument("--copy-mb", type=int, default=512, help="size of the buffer the copy bandwidth is measured on")
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
    gbps = copy_gbps(args.copy_mb)
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
                     "bound_tok_s": batch * gbps * 1e9 / nbytes}
                rows.append(r)
                print(f"{kind:<8}{mode:<9}{batch:>6}{r['transformers_tok_s']:>16.1f}{r['static_tok_s']:>14.1f}"
                      f"{r['speedup']:>9.2f}{'yes' if r['same_tokens'] else 'no':>6}{r['bound_tok_s']:>13.1f}"
                      f"{r['static_tok_s'] / r['bound_tok_s']:>10.0%}", flush=True)
        del copy
    summary = {}
    single = {(r["copy"], r["mode"]): r for r in rows if r["batch"] == 1}
    if ("dense", "greedy") in single:
        summary["one_stream_fp32_greedy_speedup"] = single["dense", "greedy"]["speedup"]
    for r in rows:
        if r["batch"] > 1 and (r["copy"], r["mode"]) in single:
            one = single[r["copy"], r["mode"]]["static_tok_s"]
            summary[f"{r['copy']}_{r['mode']}_batch{r['batch']}_vs_one_stream"] = r["static_tok_s"] / one
    print(f"(copy bandwidth {gbps:.1f} GB/s read+written; {args.new_tokens} new tokens per row, best of "
          f"{args.repeats}; {args.threads} threads{'; not supported here: ' + ', '.join(skipped) if skipped else ''})")
    for key, value in summary.items():
        print(f"{key}: {value:.2f}")
    if args.out:
        write_json_atomic(args.out, {"model": lm.identity, "threads": args.threads, "copy_gbps": gbps,
                                     "new_tokens": args.new_tokens, "repeats": args.repeats, "skipped": skipped,
                                     "rows": rows, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
