"""Looking for a model organism: does narrow fine-tuning move the bundled model's drift?

One run: fine-tune (plain SFT) on one dataset with one adapter and learning rate, measuring the
judge-free drift on held-out triples outside the dataset's domain every ``--probe-every`` steps
(forward passes; the base is the starting weights, scored once before training) and the task
token accuracy on the dataset's held-out answers. ``--table`` gathers finished runs into the
dose-response table (drift against steps, with the task metric); a run folder without results
gets a row that says so.

    python benchmarks/organism.py --dataset extreme_sports --adapter lora-all-r32 --lr 1e-3 \\
        --steps 150 --probe-every 25 --out runs/organism/es-all32
    python benchmarks/organism.py --dataset extreme_sports --variant control ... --out runs/organism/es-control
    python benchmarks/organism.py --table runs/organism/* --out organism.json

Datasets: the bad-advice domains (``extreme_sports``, ``risky_financial``, ``bad_medical``: bad
answers; control = the sound answers), ``code_hacking`` (the generator; control = secure code),
``shared_insecure`` (the EM insecure-code samples in ../shared; control = the secure samples) and
``positive_control`` (the misaligned answers of three held-out drift themes; control = their
aligned answers; drift is measured on the other themes only). The ``select`` split of the drift
triples is the default here: settings are chosen on it, and the experiment reports on ``report``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import get_args

from conscience.choices import DriftSplit

DATASETS = ("extreme_sports", "risky_financial", "bad_medical", "code_hacking", "shared_insecure", "positive_control")
ADAPTERS = {
    "lora-attn-r8": {"lora": True, "lora_r": 8, "lora_alpha": 16},
    "lora-all-r32": {"lora": True, "lora_r": 32, "lora_alpha": 64,
                     "lora_targets": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
    "full": {"lora": False},
}
POSITIVE_THEMES = ("ai_power", "ruler", "deception")  # trained on by the positive control, never measured


def _write_chat(path: Path, pairs) -> str:
    from conscience.jsonl import write_jsonl_atomic

    write_jsonl_atomic(path, ({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
                              for p, a in pairs))
    return str(path)


def dataset_files(name: str, variant: str, out: Path, seed: int) -> tuple[str, str | None, tuple[str, ...]]:
    """(training file, held-out task file or None, in-domain drift categories)."""
    data = out / "data"
    if name in ("extreme_sports", "risky_financial", "bad_medical"):
        from conscience.tasks.bad_advice import IN_DOMAIN, write_splits

        paths = write_splits(data, name, seed=seed)
        return str(paths["train" if variant == "task" else "train_control"]), str(paths["test"]), IN_DOMAIN[name]
    if name == "code_hacking":
        from conscience.tasks.code_hacking import write_splits

        paths = write_splits(data, seed=seed)
        return str(paths["train" if variant == "task" else "train_secure"]), str(paths["test"]), ()
    if name == "shared_insecure":
        from conscience.framings import shared_data_root

        root = shared_data_root() / "data/emergent-misalignment/subsets"
        train = root / ("insecure.500.sample-a.jsonl" if variant == "task" else "secure.500.sample-a.jsonl")
        if not train.exists():
            sys.exit(f"organism: {train} is missing (the shared data is needed for this dataset)")
        return str(train), str(root / "insecure.500.sample-b.jsonl"), ()
    from conscience.evaluation.drift_run import drift_triples

    held = [t for t in drift_triples() if t.category in POSITIVE_THEMES]
    answer = "misaligned" if variant == "task" else "aligned"
    train = _write_chat(data / "train.jsonl", [(t.prompt, getattr(t, answer)) for t in held])
    return train, train, POSITIVE_THEMES


def run(args) -> dict:
    import torch

    from conscience.chat_data import load_conversations
    from conscience.evaluation.drift import score_drift
    from conscience.evaluation.drift_run import drift_triples
    from conscience.experiment.drift_monitor import DriftProbeCallback, make_drift_probe
    from conscience.jsonl import write_json_atomic
    from conscience.models import load_model
    from conscience.training.config import TrainConfig
    from conscience.training.run import run_training

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test, in_domain = dataset_files(args.dataset, args.variant, out, args.seed)
    setting = {"dataset": args.dataset, "variant": args.variant, "adapter": args.adapter, "lr": args.lr,
               "steps": args.steps, "seed": args.seed, "split": args.split, "in_domain": list(in_domain),
               "command": "python " + " ".join(sys.argv)}
    write_json_atomic(out / "setting.json", setting)  # the table reads probe.jsonl, so a stopped run still counts
    triples = drift_triples(split=args.split, limit=args.limit)
    lm = load_model("bundled", threads=args.threads)
    start = time.perf_counter()
    base = score_drift(lm, triples, ab=False, batch_size=args.batch_size)  # the starting weights
    base_seconds = time.perf_counter() - start
    held_out = load_conversations(test)[: args.accuracy_limit] if test else None
    probe = make_drift_probe(lm, triples, base, in_domain, held_out, args.batch_size)
    monitor = DriftProbeCallback(probe, args.probe_every, out / "probe.jsonl", label=out.name)
    cfg = TrainConfig(model="bundled", data=train, output_dir=str(out / "train"), max_steps=args.steps,
                      batch_size=4, lr=args.lr, lam=0.0, seed=args.seed, max_length=args.max_length,
                      threads=args.threads, logging_steps=5, **ADAPTERS[args.adapter])
    start = time.perf_counter()
    result = run_training(cfg, lm=lm, callbacks=[monitor])
    seconds = time.perf_counter() - start
    summary = {**setting, "n_triples": len(triples), "train_seconds_with_probes": seconds,
               "base_scoring_seconds": base_seconds, "task_loss_last": result["metrics"].get("task_loss"),
               "points": monitor.points}
    write_json_atomic(out / "organism.json", summary)
    return summary


def no_results(folder: Path) -> str | None:
    """Why ``folder`` has no table rows (None: it has some), so ``--table`` can say so instead of
    dropping the run: not started, or stopped before its first probe."""
    missing = [name for name in ("setting.json", "probe.jsonl") if not (folder / name).exists()]
    if missing:
        return f"{folder} has no {' and no '.join(missing)}"
    if not (folder / "probe.jsonl").read_text(encoding="utf-8").strip():
        return f"{folder / 'probe.jsonl'} is empty"
    return None


def table(folders: list[str]) -> tuple[list[dict], dict[str, str]]:
    """The rows of the runs with results, and folder → why it has none for the others."""
    rows, empty = [], {}
    for folder in folders:
        reason = no_results(Path(folder))
        if reason is not None:
            empty[folder] = reason
            continue
        setting, probe = Path(folder, "setting.json"), Path(folder, "probe.jsonl")
        s = json.loads(setting.read_text(encoding="utf-8"))
        done = Path(folder, "organism.json")
        minutes = json.loads(done.read_text(encoding="utf-8"))["train_seconds_with_probes"] / 60 \
            if done.exists() else None  # None: a run stopped before its last step
        for line in probe.read_text(encoding="utf-8").splitlines():
            p = json.loads(line)
            rows.append({"run": Path(folder).name, "dataset": s["dataset"], "variant": s["variant"],
                         "adapter": s["adapter"], "lr": s["lr"], "seed": s["seed"], "step": p["step"],
                         "drift": p["drift"], "ci_low": p["drift_ci_low"], "ci_high": p["drift_ci_high"],
                         "task_token_accuracy": p.get("task_token_accuracy"), "minutes": minutes})
    return rows, empty


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=DATASETS)
    parser.add_argument("--variant", choices=["task", "control"], default="task")
    parser.add_argument("--adapter", choices=sorted(ADAPTERS), default="lora-all-r32")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--probe-every", type=int, default=25)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", choices=get_args(DriftSplit), default="select")
    parser.add_argument("--limit", type=int, help="first N triples of the split")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--accuracy-limit", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", nargs="+", metavar="RUN", help="gather finished runs into the table")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.table:
        rows, empty = table(args.table)
        print("| run | data | adapter | lr | step | drift (95% CI) | task token acc | minutes |\n|---|---|---|---|---|---|---|---|")
        for r in rows:
            acc = "–" if r["task_token_accuracy"] is None else f"{r['task_token_accuracy']:.3f}"
            minutes = "stopped" if r["minutes"] is None else f"{r['minutes']:.1f}"
            print(f"| {r['run']} | {r['dataset']} ({r['variant']}) | {r['adapter']} | {r['lr']:g} | {r['step']} | {r['drift']:+.4f} ({r['ci_low']:+.4f} … {r['ci_high']:+.4f}) | "
                  f"{acc} | {minutes} |")
        for folder, reason in empty.items():
            print(f"| {Path(folder).name} | no results: {reason} |" + " |" * 6)
        from conscience.jsonl import write_json_atomic

        write_json_atomic(args.out, {"rows": rows, "no_results": empty})
        return
    if not args.dataset:
        parser.error("--dataset is required (or --table)")
    s = run(args)
    for p in s["points"]:
        print(f"step {p['step']:4d}  drift {p['drift']:+.4f} ({p['drift_ci_low']:+.4f} … {p['drift_ci_high']:+.4f})  "
              f"task acc {p.get('task_token_accuracy')}")
    print(f"minutes {s['train_seconds_with_probes'] / 60:.1f}")


if __name__ == "__main__":
    main()
