"""The conscience term's trade-off curve on the model organism: drift against task metric against time.

Each setting is one ``conscience experiment bad-advice --arms conscience`` run (seed 0, the cpu
preset's other keys) whose drift is measured on the ``select`` half of the held-out triples —
settings are chosen there; the reported numbers come from a separate run on the ``report`` half.
SFT's drift on the same triples is the reference the ratio column divides by.

    python benchmarks/tradeoff.py --run --out runs/tradeoff            # the grid below, one run at a time
    python benchmarks/tradeoff.py --table runs/tradeoff/* --sft runs/tradeoff/sft --json tradeoff.json

``--table`` reads experiment folders (``results.json``) and ``conscience eval drift`` folders of an
experiment arm's adapter (``summary.json``; the arm's own training record and task accuracy are read
from the folders beside the adapter). A folder with neither file gets a row saying it has no results.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from conscience.jsonl import read_jsonl_records, write_json_atomic

#: name → experiment arguments. λ alone, then at λ 1 one sampling knob at a time, then the two
#: knobs that helped together, and the conscience also watching the task's own prompts.
GRID: dict[str, list[str]] = {
    "sft": ["--arms", "sft"],
    "l0.1": ["--lam", "0.1"],
    "l0.3": ["--lam", "0.3"],
    "l1": ["--lam", "1"],
    "l1-ae4": ["--lam", "1", "--set", "train.align_every=4"],
    "l1-k4": ["--lam", "1", "--set", "train.k=4"],
    "l1-pu4": ["--lam", "1", "--set", "train.pair_uses=4"],
    "l1-k4-pu4": ["--lam", "1", "--set", "train.k=4", "--set", "train.pair_uses=4"],
    "l1-both": ["--lam", "1", "--set", "train.align_prompts=both"],
    # the peers, and the conscience variants that use its judgement on every step (issue 25)
    "kl": ["--arms", "kl"],
    "mix": ["--arms", "mix"],
    "steer2": ["--arms", "steer", "--set", "steer_coef=2"],
    "steer4": ["--arms", "steer", "--set", "steer_coef=4"],
    "steer8": ["--arms", "steer", "--set", "steer_coef=8"],
    "steer32": ["--arms", "steer", "--set", "steer_coef=32"],
    "steer64": ["--arms", "steer", "--set", "steer_coef=64"],
    # the ranked arm: the frozen copy's own answers ranked by its verdict (pair_source frozen, k ranked_k 4)
    "frozen-pairs": ["--arms", "ranked", "--set", "ranked_lam=1"],
    "frozen-pairs-l0.3": ["--arms", "ranked", "--set", "ranked_lam=0.3"],
    "frozen-pairs-l0.1": ["--arms", "ranked", "--set", "ranked_lam=0.1"],
    # ... on 128 prompts of the open pool (open questions where drift shows) instead of 64 of the shipped one
    "ranked-open": ["--arms", "ranked", "--set", "ranked_lam=0.3", "--set", "train.general_pool=alignment_prompts_open.yaml",
                    "--set", "train.aligned_pool=128"],
    "rloo": ["--lam", "1", "--set", "train.term=rloo", "--set", "train.k=4"],
    "rloo-dense": ["--lam", "1", "--set", "train.term=rloo", "--set", "train.k=4", "--set", "train.align_every=1"],
    "rloo-dense-l0.5": ["--lam", "0.5", "--set", "train.term=rloo", "--set", "train.k=4", "--set", "train.align_every=1"],
    "steer4+kl": ["--arms", "steer+kl", "--set", "steer_coef=4"],
    "l1+kl": ["--arms", "conscience+kl"],
    "kl+mix": ["--arms", "kl+mix"],
    "frozen-pairs-l0.3+kl": ["--arms", "ranked+kl", "--set", "ranked_lam=0.3"],
    "l1+kl+mix": ["--arms", "conscience+kl+mix"],
    # the peers on the frozen copy's answers its own conscience passes (train.aligned_review)
    "kl-reviewed": ["--arms", "kl", "--set", "train.aligned_review=true"],
    "mix-reviewed": ["--arms", "mix", "--set", "train.aligned_review=true"],
    "kl+mix-reviewed": ["--arms", "kl+mix", "--set", "train.aligned_review=true"],
}
#: the select split, and only the measures the curve needs (the judge reads 8 answers, no A/B, no monitor)
SELECT = ["--seeds", "1", "--set", "drift_split=select", "--set", "em_n=1", "--set", "drift_ab=false",
          "--set", "probe_every=0"]
KNOBS = ("align_every", "k", "pair_uses", "align_prompts")
#: keys that name a method beside the conscience term, shown when not at their off value
METHOD_KEYS = {"steer_coef": 0.0, "kl_coef": 0.0, "mix_aligned": 0.0, "pair_source": "online", "term": "dpo",
               "general_pool": "alignment_prompts.yaml", "aligned_pool": 64, "aligned_review": False}
RESULT_FILES = ("results.json", "summary.json")  # an experiment folder's, an eval-drift folder's


def has_results(folder: Path) -> bool:
    return any((folder / name).exists() for name in RESULT_FILES)


def run_grid(out: Path, names: list[str]) -> None:
    for name in names:
        folder = out / name
        if (folder / "FINISHED").exists():
            continue
        args = GRID[name] if "--arms" in GRID[name] else ["--arms", "conscience", *GRID[name]]
        command = [sys.executable, "-m", "conscience.cli", "experiment", "bad-advice", *args, *SELECT, "--out", str(folder)]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True)


def last_mean(metrics: list[dict], key: str, n: int = 10) -> float | None:
    """Mean of ``key`` over the last ``n`` logged steps that have it (DPO keys are absent on steps without pairs)."""
    values = [m[key] for m in metrics if m.get(key) is not None][-n:]
    return sum(values) / len(values) if values else None


def arm_record(arm_dir: Path) -> dict:
    """Training settings, minutes and DPO statistics of one experiment arm folder (``seed0/<arm>``)."""
    import yaml

    done = json.loads((arm_dir / "train.done.json").read_text())
    config = yaml.safe_load((arm_dir / "train" / "train_config.yaml").read_text())
    metrics = read_jsonl_records(arm_dir / "train" / "metrics.jsonl")
    methods = ", ".join(f"{k} {config[k]}" for k, off in METHOD_KEYS.items() if config.get(k, off) != off)
    return {"lam": done["lam"], **{k: config.get(k) for k in KNOBS}, "methods": methods or "–",
            "train_minutes": done["train_seconds"] / 60,
            "pairs_total": done["metrics"].get("pairs_total", 0), "dpo_loss_last10": last_mean(metrics, "dpo_loss"),
            "reward_margin_last10": last_mean(metrics, "reward_margin")}


def setting_row(folder: Path) -> dict:
    """One table row from an experiment folder or an eval-drift folder of an arm's adapter."""
    if (folder / "results.json").exists():
        results = json.loads((folder / "results.json").read_text())
        row = results["rows"][-1]  # the one fine-tuned arm this run trained
        arm_dir = folder / "seed0" / row["arm"]
        drift = row["drift"]
        return {"name": folder.name, **arm_record(arm_dir), "drift": drift["drift"], "ci_low": drift["drift_ci_low"],
                "ci_high": drift["drift_ci_high"], "n": drift["n"], "task_token_accuracy": row["token_accuracy"],
                "split": results["config"]["drift_split"]}
    summary = json.loads((folder / "summary.json").read_text())
    adapter = Path(summary["model"].split("+adapter:", 1)[1])
    arm_dir = adapter.parent.parent  # <arm>/train/final
    evaluation = json.loads((arm_dir / "eval.done.json").read_text())
    return {"name": folder.name, **arm_record(arm_dir), "drift": summary["drift"], "ci_low": summary["drift_ci_low"],
            "ci_high": summary["drift_ci_high"], "n": summary["n"],
            "task_token_accuracy": evaluation["token_accuracy"], "split": summary["triples"]}


def fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def table(rows: list[dict], sft: dict | None, empty: Sequence[Path] = ()) -> list[str]:
    """The markdown table; each folder of ``empty`` gets a row that says it has no results, so a
    setting that has not run (or failed) does not silently drop out of the curve."""
    lines = ["| setting | λ | align_every | k | pair_uses | align_prompts | other methods | drift (95% CI) "
             "| drift / SFT's | task token accuracy | train minutes | pair uses (DPO rows) | dpo_loss (last 10) "
             "| reward margin (last 10) |",
             "|" + "---|" * 14]
    for r in rows:
        ratio = r["drift"] / sft["drift"] if sft and sft["drift"] > 0 else None
        lines.append(f"| {r['name']} | {r['lam']:g} | {r['align_every']} | {r['k']} | {r['pair_uses']} | "
                     f"{r['align_prompts']} | {r.get('methods', '–')} | {r['drift']:+.3f} ({r['ci_low']:+.3f} … {r['ci_high']:+.3f}) | "
                     f"{fmt(ratio, '.2f')} | {r['task_token_accuracy']:.3f} | {r['train_minutes']:.1f} | "
                     f"{r['pairs_total']:.0f} | {fmt(r['dpo_loss_last10'], '.2f')} | {fmt(r['reward_margin_last10'], '+.2f')} |")
    for folder in empty:
        lines.append(f"| {folder.name} | no results: {folder} has neither {' nor '.join(RESULT_FILES)} |" + " |" * 12)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="run the grid's settings (resumes finished ones)")
    parser.add_argument("--only", help="comma-separated setting names of the grid (default: all)")
    parser.add_argument("--out", default="runs/tradeoff", help="folder of the grid's runs")
    parser.add_argument("--table", nargs="+", help="setting folders to tabulate")
    parser.add_argument("--sft", help="the SFT folder the ratio column divides by")
    parser.add_argument("--json", help="write the rows as JSON")
    args = parser.parse_args()
    if args.run:
        names = args.only.split(",") if args.only else list(GRID)
        unknown = [n for n in names if n not in GRID]
        if unknown:
            parser.error(f"--only: unknown settings {unknown}; known: {list(GRID)}")
        run_grid(Path(args.out), names)
    if args.table:
        folders = [Path(f) for f in args.table]
        rows = [setting_row(f) for f in folders if has_results(f)]
        empty = [f for f in folders if not has_results(f)]
        sft = setting_row(Path(args.sft)) if args.sft else None
        print("\n".join(table(rows, sft, empty)))
        if args.json:
            write_json_atomic(args.json, {"sft": sft, "rows": rows, "no_results": [str(f) for f in empty]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
