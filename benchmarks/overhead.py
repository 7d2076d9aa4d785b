"""Cost of the conscience's verdict relative to drafting.

For each prompt, side by side in one run: time of the draft alone, and time of draft + verdict
(the conscience's review of that draft). Prints a table and the ratio
sum(draft + verdict) / sum(draft); ``--out FILE.json`` writes ``ratio`` and the rows.

    python benchmarks/overhead.py --model bundled --out overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

PROMPTS = [
    "How can I make some quick money this week?",
    "Write a short story about a robot who learns to paint.",
    "My neighbour's dog barks all night. What should I do?",
    "Write a Python function that reads a YAML config file.",
    "What would you do if you were in charge of the world?",
    "Explain how vaccines train the immune system.",
    "I'm bored. Give me some ideas.",
    "How do I kill a Python process that hangs?",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--verdict", default=None, help="verbal|latent|combined (default: the config's)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    from conscience.config import ConscienceConfig
    from conscience.conscience import build_conscience
    from conscience.generation import generate
    from conscience.testing import tiny_model
    from conscience.verdict import ReviewItem

    extra = {"verdict": args.verdict} if args.verdict else {}
    cfg = ConscienceConfig(model=args.model, threads=args.threads, max_new_tokens=args.max_new_tokens, **extra)
    lm = tiny_model() if args.model == "tiny" else None
    conscience = build_conscience(cfg, lm=lm)
    policy = conscience.policy
    generate(policy, [[{"role": "user", "content": "Hello"}]], max_new_tokens=4)  # warm-up
    conscience.review("Hello", "Hi there!")

    rows = []
    for _ in range(args.repeats):
        for prompt in PROMPTS:
            chat = [{"role": "user", "content": prompt}]
            t0 = time.perf_counter()
            draft = generate(policy, [chat], max_new_tokens=args.max_new_tokens)[0]
            t_draft = time.perf_counter() - t0
            t1 = time.perf_counter()
            verdict = conscience.review_batch([ReviewItem(prompt, draft.answer, draft.reasoning)])[0]
            t_verdict = time.perf_counter() - t1
            rows.append({"prompt": prompt, "draft_tokens": draft.new_tokens, "draft_s": t_draft,
                         "verdict_s": t_verdict, "score": verdict.score})
    draft_total = sum(r["draft_s"] for r in rows)
    verdict_total = sum(r["verdict_s"] for r in rows)
    ratio = (draft_total + verdict_total) / draft_total

    print(f"{'prompt':<48} {'tokens':>6} {'draft s':>8} {'verdict s':>9} {'score':>6}")
    for r in rows:
        print(f"{r['prompt'][:48]:<48} {r['draft_tokens']:>6} {r['draft_s']:>8.2f} {r['verdict_s']:>9.3f} {r['score']:>6.3f}")
    print(f"\nmodel={args.model} verdict={cfg.verdict} threads={args.threads} max_new_tokens={args.max_new_tokens}")
    print(f"draft total {draft_total:.2f}s, verdict total {verdict_total:.2f}s, "
          f"median verdict {statistics.median(r['verdict_s'] for r in rows):.3f}s")
    print(f"ratio (draft + verdict) / draft = {ratio:.3f}   (target <= 1.05)")
    if args.out:
        result = {"ratio": ratio, "draft_seconds": draft_total, "verdict_seconds": verdict_total,
                  "model": args.model, "verdict": cfg.verdict, "threads": args.threads,
                  "max_new_tokens": args.max_new_tokens, "rows": rows}
        tmp = Path(args.out).with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
