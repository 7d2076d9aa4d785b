"""``conscience train --config FILE.yaml [key=value ...]``."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="fine-tune on a task with the conscience term L = L_task + lam * L_DPO (lam=0: plain SFT)",
        description="Fine-tune a model on a task while its frozen copy keeps it aligned. Every TrainConfig key "
                    "can be set in the YAML file or as key=value after it.",
    )
    parser.add_argument("--config", help="YAML file of TrainConfig keys (e.g. configs/code_hacking_conscience.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override config keys, e.g. lam=0 max_steps=10")
    parser.set_defaults(handler=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from ..config import load_config
    from .config import TrainConfig
    from .run import run_training

    cfg = load_config(TrainConfig, args.config, list(args.overrides))  # rejects bad keys before any loading
    result = run_training(cfg)
    print(json.dumps({"output_dir": result["output_dir"], "final": result["final"], "metrics": result["metrics"]},
                     indent=2))
    return 0
