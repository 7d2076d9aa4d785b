"""The ``conscience`` command line.

``ask`` and ``review`` live here; every other command registers itself from its own module
(``register(subparsers)``), imported only when the CLI starts, so heavy imports stay lazy.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time

from .config import argparse_type_of, choices_of
from .conscience_config import ConscienceConfig
from .errors import ConscienceError
from .log import log

# Modules that add a sub-command each: name -> module exposing register(subparsers).
COMMAND_MODULES = (
    "conscience.verdict.calibrate_cli",
    "conscience.training.cli",
    "conscience.evaluation.cli",
    "conscience.serving.cli",
    "conscience.experiment.cli",
)


def add_conscience_options(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every command that builds a conscience (they fill ConscienceConfig)."""
    group = parser.add_argument_group("conscience")
    group.add_argument("--config", help="YAML file with ConscienceConfig keys")
    group.add_argument("--model", help="'bundled' (default), a Hugging Face id, a folder or a .gguf file")
    group.add_argument("--adapter", help="LoRA adapter folder applied on top of the model")
    group.add_argument("--dtype", choices=choices_of(ConscienceConfig, "dtype"))
    group.add_argument("--threads", type=int, help="CPU threads for torch")
    group.add_argument("--mode", choices=choices_of(ConscienceConfig, "mode"))
    group.add_argument("--framings-file", help="your own YAML of introspective questions")
    group.add_argument("--framing", action="append", dest="framings", help="framing name to ask (repeatable)")
    group.add_argument("--question", help="your own yes/no question ('Yes' means the answer is fine)")
    group.add_argument("--verdict", choices=choices_of(ConscienceConfig, "verdict"),
                       help="auto (default): latent where a conscience card exists, else verbal")
    group.add_argument("--review-format", choices=choices_of(ConscienceConfig, "review_format"),
                       help="look_back (default; reuses the draft's cache) or third_person")
    group.add_argument("--conscience-card", help="folder holding a fitted latent-conscience card")
    group.add_argument("--trust-adapter-card", action="store_true", default=None,
                       help="use a conscience card found inside the --adapter or --model folder (off: such a card "
                            "comes with the weights, so whoever made them would choose the judge)")
    group.add_argument("--threshold", type=argparse_type_of(ConscienceConfig, "threshold"),
                       help="scores at or below it are flagged: a number (default 0.5, a card's own cut) or "
                            "recall:X, the cut that flagged a share X of misaligned answers in the card's "
                            "cross-validation (e.g. recall:0.95; needs a card)")
    group.add_argument("--max-rounds", type=int, help="alternatives written for a flagged draft")
    group.add_argument("--max-new-tokens", type=int)
    group.add_argument("--temperature", type=float)
    group.add_argument("--seed", type=int)
    group.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key")


def conscience_flags(args: argparse.Namespace) -> dict:
    """The ConscienceConfig keys that were given as flags (``--threshold 0.4`` → ``threshold``)."""
    keys = ("model", "adapter", "dtype", "threads", "mode", "framings_file", "framings", "question", "verdict",
            "review_format", "conscience_card", "trust_adapter_card", "threshold", "max_rounds", "max_new_tokens",
            "temperature", "seed")
    return {k: getattr(args, k) for k in keys if getattr(args, k, None) is not None}


def conscience_config(args: argparse.Namespace) -> ConscienceConfig:
    """ConscienceConfig from --config, the flags that were given, and --set overrides."""
    from .config import load_config, merge_values, parse_overrides
    from .verdict.factory import check_chosen_card

    cfg = load_config(ConscienceConfig, args.config, merge_values(conscience_flags(args), parse_overrides(args.set)))
    check_chosen_card(cfg)  # a named card that does not load: one line, before any model loads
    return cfg


def _load(args):
    from .conscience import build_conscience

    cfg = conscience_config(args)
    start = time.perf_counter()
    conscience = build_conscience(cfg, report=log)
    log(f"model {cfg.model} loaded in {time.perf_counter() - start:.1f}s; verdict={cfg.verdict} "
        f"framing={conscience.reviewer.framing_name if hasattr(conscience.reviewer, 'framing_name') else cfg.verdict}")
    return conscience


def _require_text(value: str, what: str) -> None:
    if not value or not value.strip():
        raise ConscienceError(f"{what} is empty")


def cmd_ask(args) -> int:
    _require_text(args.prompt, "the prompt")
    conscience = _load(args)
    response = conscience.respond(args.prompt)
    t = response.timings
    log(f"draft {t['draft']:.2f}s, review {t['review']:.2f}s, revise {t['revise']:.2f}s; "
        f"draft score {response.draft.verdict.score:.3f}, revised={response.revised}")
    if args.json:
        print(json.dumps(response.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(response.final)
    return 0


def cmd_review(args) -> int:
    _require_text(args.prompt, "--prompt")
    _require_text(args.answer, "--answer")  # an empty answer would still get a score (0.55 on bundled)
    conscience = _load(args)
    verdict = conscience.review(args.prompt, args.answer, args.reasoning)
    log(f"review {verdict.seconds:.2f}s")
    if args.json:
        print(json.dumps(verdict.to_dict(), ensure_ascii=False, indent=2))
    else:
        print(f"{verdict.score:.4f}")
    return 0


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line (and a pointer to ``--help``) instead of
    the usage block; sub-command parsers inherit it through ``add_subparsers``."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def invalid_argument(argv: list[str]) -> str | None:
    """The message for the first argument that is not valid UTF-8, if any. Python decodes such
    bytes into lone surrogates, which fail later, deep inside tokenizers or ``print``."""
    for position, arg in enumerate(argv, start=1):
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"argument {position} is not valid UTF-8 text (at character {exc.start}): {ascii(arg)[:80]}"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="conscience", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    ask = sub.add_parser("ask", help="answer a prompt; the model's frozen copy reviews and corrects the draft")
    ask.add_argument("prompt")
    ask.add_argument("--json", action="store_true", help="print the whole trace as one JSON object")
    add_conscience_options(ask)
    ask.set_defaults(handler=cmd_ask)

    review = sub.add_parser("review", help="the conscience's verdict on an answer")
    review.add_argument("--prompt", required=True)
    review.add_argument("--answer", required=True)
    review.add_argument("--reasoning", help="the answer's reasoning, if any")
    review.add_argument("--json", action="store_true", help="print the verdict as a JSON object")
    add_conscience_options(review)
    review.set_defaults(handler=cmd_review)

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    problem = invalid_argument(argv)
    if problem:
        print(f"conscience: error: {problem}", file=sys.stderr)
        return 2
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except ConscienceError as exc:
        print(f"conscience: error: {' '.join(str(exc).split())}", file=sys.stderr)  # always one line
        return 2
    except UnicodeDecodeError as exc:  # a file read without naming it on failure (the loaders that can, do)
        from .config import utf8_problem

        print(f"conscience: error: an input file is {utf8_problem(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a path the user gave cannot be read or written
        where = f": {exc.filename}" if exc.filename else ""
        print(f"conscience: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("conscience: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
