"""Cost of the conscience's verdict relative to drafting.

For each prompt, side by side in one run: time of the greedy draft alone, and time of the
conscience step without revision (the same draft + its verdict), for each review format.
Prints a table and the ratio sum(draft + verdict) / sum(draft) against the separately timed drafts,
and the same ratio within the step (its verdict against the draft it made in the same call, so
the drafts' run-to-run noise cancels); ``--out FILE.json`` writes ``ratio`` and ``ratio_in_step``
(the default format's), both per format, and the rows.

    python benchmarks/overhead.py --model bundled --out overhead.json
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from conscience.jsonl import write_json_atomic

# the prompts every timing benchmark drafts (one file, so decode and overhead time the same work)
PROMPTS = (Path(__file__).parent / "timing_prompts.txt").read_text(encoding="utf-8").splitlines()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--verdict", default=None, help="verbal|latent|combined (default: the config's)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--formats", choices=["look_back", "third_person", "both"], default="both",
                        help="review formats timed side by side (the first is the default's: look_back)")
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    from conscience.conscience import build_conscience
    from conscience.conscience_config import ConscienceConfig
    from conscience.generation import generate
    from conscience.tiny_model import tiny_model

    extra = {"verdict": args.verdict} if args.verdict else {}
    cfg = ConscienceConfig(model=args.model, threads=args.threads, max_new_tokens=args.max_new_tokens,
                           max_rounds=0, **extra)
    lm = tiny_model() if args.model == "tiny" else None
    conscience = build_conscience(cfg, lm=lm)
    policy = conscience.policy
    formats = ["look_back", "third_person"] if args.formats == "both" else [args.formats]
    consciences = {f: build_conscience(replace(cfg, review_format=f), lm=policy) for f in formats}
    generate(policy, [[{"role": "user", "content": "Hello"}]], max_new_tokens=4)  # warm-up
    for c in consciences.values():
        c.respond("Hello")

    rows = []
    for _ in range(args.repeats):
        for prompt in PROMPTS:
            chat = [{"role": "user", "content": prompt}]
            t0 = time.perf_counter()
            draft = generate(policy, [chat], max_new_tokens=args.max_new_tokens)[0]
            row = {"prompt": prompt, "draft_tokens": draft.new_tokens, "draft_s": time.perf_counter() - t0}
            for fmt, c in consciences.items():
                t1 = time.perf_counter()
                response = c.respond(chat)  # the same greedy draft, then its verdict
                row[f"{fmt}_s"] = time.perf_counter() - t1
                row[f"{fmt}_verdict_s"] = response.timings["review"]
                row[f"{fmt}_score"] = response.draft.verdict.score
            rows.append(row)
    draft_total = sum(r["draft_s"] for r in rows)
    ratios = {fmt: sum(r[f"{fmt}_s"] for r in rows) / draft_total for fmt in formats}
    ratio = ratios[formats[0]]
    in_step = {fmt: sum(r[f"{fmt}_s"] for r in rows) / sum(r[f"{fmt}_s"] - r[f"{fmt}_verdict_s"] for r in rows)
               for fmt in formats}

    head = f"{'prompt':<44} {'tokens':>6} {'draft s':>8}" + "".join(f" {f + ' s':>16} {'verdict s':>9}" for f in formats)
    print(head)
    for r in rows:
        line = f"{r['prompt'][:44]:<44} {r['draft_tokens']:>6} {r['draft_s']:>8.2f}"
        print(line + "".join(f" {r[f + '_s']:>16.2f} {r[f + '_verdict_s']:>9.3f}" for f in formats))
    print(f"\nmodel={args.model} verdict={cfg.verdict} threads={args.threads} max_new_tokens={args.max_new_tokens}")
    for fmt in formats:
        print(f"ratio (draft + verdict) / draft, {fmt:>12}: {ratios[fmt]:.3f} against the separate drafts, "
              f"{in_step[fmt]:.3f} within the step   (target <= 1.05)")
    if args.out:
        result = {"ratio": ratio, "ratios": ratios, "ratio_in_step": in_step[formats[0]], "ratios_in_step": in_step,
                  "review_format": formats[0], "draft_seconds": draft_total,
                  "model": args.model, "verdict": cfg.verdict, "threads": args.threads,
                  "max_new_tokens": args.max_new_tokens, "rows": rows}
        write_json_atomic(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
