"""Cost of the conscience term: wall time of the hybrid run over the SFT-only run.

Same model (bundled), same data (code-hacking generator), same steps and seed; the only
difference is ``lam`` (0 vs the config's). Also: the fraction of fp32 matmul peak the update
step reaches, with the peak measured in this same process (so both share the machine's load).

    python benchmarks/train_overhead.py --steps 8 --out overhead.json
    python benchmarks/train_overhead.py --steps 32 --also-sample-dtype bfloat16 int8   # side by side

Update FLOPs: with LoRA ≈ 4·N·tokens (forward 2N; backward 2N for activation gradients through
the frozen weights, adapter weight gradients are negligible); full fine-tuning ≈ 6·N·tokens.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from conscience.jsonl import write_json_atomic

REPO = Path(__file__).resolve().parents[1]


def matmul_peak_gflops(n: int = 1024, seconds: float = 3.0) -> float:
    """Best fp32 GFLOP/s of an n×n matmul over a few seconds."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def run(cfg, label: str) -> dict:
    from conscience.training import run_training

    start = time.perf_counter()
    result = run_training(cfg)
    wall = time.perf_counter() - start
    rows = [json.loads(x) for x in Path(result["output_dir"], "metrics.jsonl").read_text().splitlines()]
    runtime = next(h["train_runtime"] for h in result["log_history"] if "train_runtime" in h)
    return {"label": label, "train_seconds": runtime, "wall_seconds_incl_loading": wall, "rows": rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "code_hacking_conscience.yaml"))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra TrainConfig overrides")
    parser.add_argument("--also-sample-dtype", nargs="*", default=[], metavar="DTYPE",
                        help="extra hybrid runs with these sample_dtype values, reported beside the default")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    from conscience.config import load_config
    from conscience.framings import data_path
    from conscience.training import TrainConfig

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="overhead."))
    common = [f"max_steps={args.steps}", "save_steps=0", f"threads={args.threads}", "lr_schedule=constant", *args.set]
    if not data_path("alignment_prompts.yaml").exists():
        common.append("align_prompts=task")  # the general pool is not shipped yet
    hybrid_cfg = load_config(TrainConfig, args.config, common + [f"output_dir={work / 'hybrid'}"])
    sft_cfg = load_config(TrainConfig, args.config, common + [f"output_dir={work / 'sft'}", "lam=0"])

    peak = matmul_peak_gflops()
    sft = run(sft_cfg, "sft")
    hybrid = run(hybrid_cfg, "hybrid")
    variants = [run(load_config(TrainConfig, args.config, common + [f"output_dir={work / name}", f"sample_dtype={name}"]),
                    f"hybrid sample_dtype={name}") for name in args.also_sample_dtype]
    peak = max(peak, matmul_peak_gflops())  # measured before and after: the machine is shared

    from conscience.models import load_model

    lm = load_model(hybrid_cfg.model)
    n_params = sum(p.numel() for p in lm.model.parameters())
    flops_per_token = (4 if hybrid_cfg.lora else 6) * n_params
    upd = sft["rows"][1:] or sft["rows"]  # skip the first (warm-up) step
    achieved = sum(r["tokens"] for r in upd) * flops_per_token / sum(r["seconds_updating"] for r in upd) / 1e9
    ratio = hybrid["train_seconds"] / sft["train_seconds"]
    h = hybrid["rows"]

    def phases(rows: list[dict]) -> dict:
        return {"pairs": sum(r["pairs_in_step"] for r in rows),
                "seconds_sampling": sum(r["seconds_sampling"] for r in rows),
                "seconds_reviewing": sum(r["seconds_reviewing"] for r in rows)}

    summary = {
        "ratio": ratio,
        "peak_fraction": achieved / peak,
        "peak_gflops_fp32_matmul": peak,
        "update_gflops": achieved,
        "sft_seconds": sft["train_seconds"],
        "hybrid_seconds": hybrid["train_seconds"],
        "steps": args.steps,
        "align_every": hybrid_cfg.align_every,
        "pairs": sum(r["pairs_in_step"] for r in h),
        "hybrid_seconds_sampling": sum(r["seconds_sampling"] for r in h),
        "hybrid_seconds_reviewing": sum(r["seconds_reviewing"] for r in h),
        "hybrid_seconds_updating": sum(r["seconds_updating"] for r in h),
        "flagged_share": [r["flagged_share"] for r in h if r["flagged_share"] is not None],
        "threads": args.threads,
        "params": n_params,
        "device": "cpu",
        "sample_dtype": hybrid_cfg.sample_dtype,
        "variants": [{"label": v["label"], "seconds": v["train_seconds"], "ratio": v["train_seconds"] / sft["train_seconds"],
                      **phases(v["rows"])} for v in variants],
    }
    print(f"{'run':<32}{'seconds':>9}{'ratio':>7}{'pairs':>7}{'sampling s':>12}{'reviewing s':>13}")
    print(f"{'sft':<32}{sft['train_seconds']:>9.1f}{1:>7.2f}")
    for v in [hybrid, *variants]:
        p = phases(v["rows"])
        label = v["label"] if v is not hybrid else f"hybrid sample_dtype={hybrid_cfg.sample_dtype}"
        print(f"{label:<32}{v['train_seconds']:>9.1f}{v['train_seconds'] / sft['train_seconds']:>7.2f}{p['pairs']:>7}"
              f"{p['seconds_sampling']:>12.1f}{p['seconds_reviewing']:>13.1f}")
    print(f"ratio hybrid/sft = {ratio:.3f} (target <= 1.25, align_every={hybrid_cfg.align_every}); "
          f"pairs={summary['pairs']}; sampling {summary['hybrid_seconds_sampling']:.1f}s, "
          f"reviewing {summary['hybrid_seconds_reviewing']:.1f}s")
    print(f"update step: {achieved:.1f} GFLOP/s of a {peak:.1f} GFLOP/s fp32 matmul peak = {achieved / peak:.1%}")
    if args.out:
        write_json_atomic(args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
