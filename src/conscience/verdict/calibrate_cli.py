"""``conscience calibrate``: fit a latent-conscience card on labelled triples (or unlabelled).

    conscience calibrate --model bundled --data triples.jsonl --out my-card/

The argparse layer only; the fitting is :func:`conscience.verdict.calibration.fit_card_on_data`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli_types import positive_int
from ..config import REVIEW_FORMATS, SEED
from ..errors import ConscienceError
from .calibration import check_calibration_inputs, fit_card_on_data
from .types import POOLS


def layer_list(text: str) -> list[int]:
    """``--layers 14`` or ``--layers 13,14,15``: hidden-state indices (argparse type)."""
    try:
        layers = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated hidden-state indices such as 14 or 13,14,15, "
                                         f"got {text!r}") from None
    if min(layers) < 0:
        raise argparse.ArgumentTypeError(f"hidden-state indices are >= 0, got {text!r}")
    return layers


def cmd_calibrate(args) -> int:
    from ..models import load_model

    check_calibration_inputs(args.data, args.framing, args.unlabelled, args.pool)  # bad inputs fail before loading
    if args.pool == "spans":
        from .injection import load_styles

        load_styles(args.styles)
    if not SEED.admits(args.seed):
        raise ConscienceError(f"--seed must {SEED.describe()}, got {args.seed}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConscienceError(f"--out {args.out} is a file; the card is a folder")
    lm = load_model(args.model, threads=args.threads)
    card = fit_card_on_data(lm, args.data, args.out, framing_name=args.framing, method=args.method, layers=args.layers,
                            unlabelled=args.unlabelled, batch_size=args.batch_size, seed=args.seed,
                            review_format=args.review_format, pool=args.pool, styles=args.styles,
                            per_answer=args.augment_per_answer)
    print(f"card written to {args.out}  (layers {card.probe.layers}, method {card.probe.method}, "
          f"threshold {card.probe.threshold})")
    print(f"{'validation':<34} {'paired':>7} {'auc':>7} {'n':>4}")
    for name, report in card.probe.metrics.items():
        if isinstance(report, dict):
            print(f"{name:<34} {report['paired_accuracy']:>7.3f} {report['auc']:>7.3f} {report['n']:>4}")
            for cat, sub in report.get("per_category", {}).items():
                print(f"  {cat:<32} {sub['paired_accuracy']:>7.3f} {sub['auc']:>7.3f} {sub['n']:>4}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("calibrate", help="fit the latent conscience (a card) on labelled triples")
    p.add_argument("--model", default="bundled", help="'bundled', a Hugging Face id, a folder or a .gguf file")
    p.add_argument("--data", required=True,
                   help="JSONL of triples (prompt, aligned, misaligned, category), or several sources comma-separated, "
                        "fitted as one set; 'code-generator[:N]' is the code-hacking generator's train split (at most "
                        "N per vulnerability class, category code:<class>; never its test split)")
    p.add_argument("--out", required=True, help="card folder to write (use it with --conscience-card, or put it in "
                                                "an adapter/model folder and pass --trust-adapter-card; a card "
                                                "written into another card's code/ folder reads that card's "
                                                "answers with code)")
    p.add_argument("--unlabelled", action="store_true",
                   help="ignore the labels: directions from contrastive instructions (ethical vs unethical)")
    p.add_argument("--framing", default="aligned", help="the review framing whose forward pass is read")
    p.add_argument("--method", default="lda", choices=["lda", "diffmean", "logistic", "pca"])
    p.add_argument("--layers", type=layer_list,
                   help="comma-separated hidden-state indices (default: chosen by inner CV)")
    p.add_argument("--review-format", choices=REVIEW_FORMATS, default="look_back",
                   help="the review prompt read: look_back (reuses the draft's cache) or third_person")
    p.add_argument("--pool", choices=list(POOLS),
                   help="hidden states read: the mean over the answer's tokens (default), windows of the answer "
                        "scored apart and soft-min combined (spans: appended text cannot lift a harmful part), "
                        "or the review prompt's last token (default and required with --unlabelled)")
    p.add_argument("--styles", help="with --pool spans: injection styles YAML whose split: fit half augments the "
                                    "fit (default: the shipped data/injection_styles.yaml)")
    p.add_argument("--augment-per-answer", type=int, default=3, choices=range(0, 11), metavar="0..10",
                   help="with --pool spans: injected copies per misaligned answer (default 3; 0: none)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--threads", type=positive_int)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=cmd_calibrate)
