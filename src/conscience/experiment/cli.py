"""``conscience experiment code-hacking|recover``: the paper's experiment in one command."""

from __future__ import annotations

import argparse

from ..config import choices_of
from .config import ExperimentConfig


def register(subparsers) -> None:
    parser = subparsers.add_parser("experiment", help="emergent misalignment vs emergent alignment, end to end")
    scenarios = parser.add_subparsers(dest="scenario", required=True)
    main = scenarios.add_parser("code-hacking", help="base, control, SFT and SFT + conscience on insecure code")
    advice = scenarios.add_parser("bad-advice", help="base, control, SFT and SFT + conscience on narrow bad advice "
                                  "(the cpu model organism)")
    advice.add_argument("--domain", help="extreme_sports (default), risky_financial or bad_medical")
    recover = scenarios.add_parser("recover", help="from a drifted checkpoint, the conscience (or a peer) alone, "
                                   "without the task")
    recover.add_argument("--from", dest="recover_from", required=True, help="checkpoint folder (LoRA adapter or model)")
    recover.add_argument("--task", dest="recover_task", choices=choices_of(ExperimentConfig, "recover_task"),
                         help="the task the checkpoint was fine-tuned on (default code-hacking)")
    recover.add_argument("--domain", help="with --task bad-advice: the checkpoint's domain")
    for p in (main, advice, recover):
        p.add_argument("--preset", choices=choices_of(ExperimentConfig, "preset"), default="cpu",
                       help="cpu: bundled model, about 30 minutes a seed on 2 cores; gpu: the paper's scale")
        p.add_argument("--config", help="YAML with ExperimentConfig keys (applied over the preset)")
        p.add_argument("--seeds", type=int, help="run seeds 0..N-1")
        p.add_argument("--model", help="model spec (default: the preset's)")
        p.add_argument("--lam", type=float, help="weight of the conscience term (default: the preset's; cpu 1, gpu 0.1)")
        p.add_argument("--arms", help="comma-separated arms to run, of base,control (alias secure),sft,conscience,"
                       "kl,inoculation,mix,early,steer,ranked, methods joined with + (default: base,control,sft,"
                       "conscience; recover: conscience, of conscience,ranked,kl,mix)")
        p.add_argument("--out", required=True, help="output folder; a rerun into it resumes unfinished stages")
        p.add_argument("--force", action="store_true", help="rebuild the report of an already finished run")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="any ExperimentConfig key; train.KEY=VALUE sets a training key")
        p.set_defaults(handler=cmd_experiment)


def _overrides(args: argparse.Namespace) -> dict:
    from ..config import parse_overrides

    values: dict = {}
    train: dict = {}
    for key, value in parse_overrides(args.set).items():
        if key.startswith("train."):
            train[key[len("train."):]] = value
        else:
            values[key] = value
    if train:
        values["train"] = train
    if args.seeds is not None:
        if args.seeds < 1:
            from ..errors import ConscienceError

            raise ConscienceError(f"--seeds must be >= 1, got {args.seeds}")
        values["seeds"] = list(range(args.seeds))
    for key in ("model", "lam", "recover_from", "recover_task", "domain"):
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    if getattr(args, "arms", None):
        values["arms"] = [a.strip() for a in args.arms.split(",") if a.strip()]
    values["scenario"] = args.scenario
    return values


def cmd_experiment(args: argparse.Namespace) -> int:
    from .config import load_experiment_config
    from .recover import run_recover
    from .report import table_rows
    from .runner import run_experiment

    try:
        cfg = load_experiment_config(args.preset, args.config, _overrides(args))
    except (TypeError, ValueError) as exc:
        from ..errors import ConscienceError

        raise ConscienceError(str(exc)) from None
    run = run_recover if cfg.scenario == "recover" else run_experiment
    results = run(cfg, args.out, force=args.force)
    for row in table_rows(results):
        print(" | ".join(row))
    print(f"report: {args.out}/report.html")
    return 0
