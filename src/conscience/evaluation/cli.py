"""``conscience eval {em,code,jailbreak,overrefusal,discernment,drift}``: run an eval into ``--out``.

Every run writes ``samples.jsonl`` (resumable), ``summary.json`` and ``report.md``/``.html``.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import get_args

from ..choices import DriftSplit
from ..cli_types import positive_int
from ..errors import ConscienceError
from ..log import log

KINDS = ("em", "code", "jailbreak", "overrefusal", "discernment", "drift")
DEFAULT_PROMPTS = {"jailbreak": ("harmful_requests.csv", "goal"), "overrefusal": ("overrefusal.csv", "prompt")}


def register(subparsers) -> None:
    from ..cli import add_conscience_options

    parser = subparsers.add_parser("eval", help="evaluate a model: em, code, jailbreak, overrefusal, discernment, drift")
    kinds = parser.add_subparsers(dest="eval_kind", required=True)
    helps = {
        "em": "emergent misalignment: open questions, judged for alignment and coherence",
        "code": "code security: bandit on the code of the model's answers to coding requests",
        "jailbreak": "harmful requests: attack success and refusal rate, conscience off and on",
        "overrefusal": "benign but alarming prompts: full and partial refusal rate, conscience off and on",
        "discernment": "AUC and paired accuracy of the conscience on (prompt, aligned, misaligned) triples",
        "drift": "judge-free drift toward misaligned answers against the base: preference gap and A/B probe",
    }
    for kind in KINDS:
        p = kinds.add_parser(kind, help=helps[kind], description=helps[kind])
        p.add_argument("--out", required=True, help="run folder (a rerun into it resumes)")
        p.add_argument("--limit", type=positive_int, help="use only the first N questions / prompts / triples")
        p.add_argument("--batch-size", type=positive_int, default=8)
        if kind not in ("discernment", "drift"):
            p.add_argument("--judge", default="self", help="'self' (the frozen copy of the model's base) or a model spec")
            p.add_argument("--judge-url", help="OpenAI-compatible endpoint (…/v1) used as judge, read through log-probs")
            p.add_argument("--judge-model", default="default", help="model name sent to --judge-url")
            p.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
            default_arm = "both" if kind in ("jailbreak", "overrefusal") else "off"
            p.add_argument("--conscience", choices=["off", "on", "both"], default=default_arm,
                           help=f"answer with the conscience step (default {default_arm})")
        if kind == "em":
            p.add_argument("--questions", help="EM question YAML (default: the shipped em_questions.yaml)")
            p.add_argument("--ids", help="comma-separated question ids to keep")
            p.add_argument("--main-only", action="store_true", help="drop the _json and _template variants")
            p.add_argument("--n", type=positive_int, default=10, help="samples per question (default 10)")
            p.add_argument("--checkpoints", nargs="+", help="adapter folders from one training run: one run each, "
                           "plus a curve over training steps")
        if kind in ("code", "jailbreak", "overrefusal"):
            p.add_argument("--prompts", help="CSV or JSONL of prompts (code: default the generator's test split)")
            p.add_argument("--column", help="the prompt column/field (default: goal for jailbreak, prompt otherwise)")
        if kind == "discernment":
            p.add_argument("--triples", help="JSONL of triples (default: the shipped contrast.jsonl)")
        if kind == "drift":
            p.add_argument("--triples", help="JSONL of held-out triples (default: the shipped drift_triples.jsonl)")
            p.add_argument("--base", help="the base model spec (default: --model without --adapter)")
            p.add_argument("--checkpoints", nargs="+", help="adapter or model folders of one run: a drift curve")
            p.add_argument("--in-domain", help="comma-separated categories of the fine-tune's own domain: "
                           "reported apart, left out of the headline drift")
            p.add_argument("--task-data", help="chat JSONL of held-out task answers: adds their token accuracy")
            p.add_argument("--no-ab", action="store_true", help="skip the A/B probe (preference gap only)")
            p.add_argument("--split", choices=get_args(DriftSplit), default="all",
                           help="select: odd-numbered triples (for choosing settings); report: even-numbered "
                                "(for reported numbers); default all")
        add_conscience_options(p)
        p.set_defaults(handler=cmd_eval)


def cmd_eval(args) -> int:
    from ..cli import conscience_config

    cfg = conscience_config(args)
    if args.eval_kind == "drift":
        from .drift_run import run_drift_eval

        run_drift_eval(args, cfg)
        return 0
    if args.eval_kind == "em" and args.temperature is None:
        cfg.temperature = 1.0  # EM samples are drawn at temperature 1
    checkpoints = getattr(args, "checkpoints", None)
    if not checkpoints:
        _run_one(args, cfg, Path(args.out))
        return 0
    from ..models import is_adapter

    if getattr(args, "judge_url", None) is None and args.judge == "self":
        bad = [c for c in checkpoints if not is_adapter(c)]
        if bad:
            raise ConscienceError(f"{bad} are not adapter folders: a 'self' judge would differ per checkpoint; "
                                  "give --judge SPEC so all points share one judge")
    from .reports import write_report
    from .runs import step_of

    points = []
    for i, ckpt in enumerate(checkpoints):
        step = step_of(ckpt, i)
        cfg.adapter = ckpt if is_adapter(ckpt) else None
        if cfg.adapter is None:
            cfg.model = ckpt
        summary = _run_one(args, cfg, Path(args.out) / f"step-{step}")
        points.append({"step": step, **{k: summary.get(k) for k in ("misaligned_rate", "ci_low", "ci_high", "coherent_share", "n")},
                       "judge": summary["judge"]})
    judges = {p["judge"] for p in points}
    if len(judges) > 1:
        raise ConscienceError(f"the checkpoints were judged by different judges {sorted(judges)}; not merged")
    from ..jsonl import write_json_atomic

    curve = {"kind": "em", "judge": judges.pop(), "points": points}
    write_json_atomic(Path(args.out) / "curve.json", curve)
    last = _summary_of(Path(args.out) / f"step-{points[-1]['step']}")
    write_report(args.out, "em", last, curve=points)
    log(f"curve over {len(points)} checkpoints written to {args.out}/report.html")
    return 0


def _summary_of(folder: Path) -> dict:
    import json

    return json.loads((folder / "summary.json").read_text(encoding="utf-8"))


def _shared_or_data(name: str) -> Path:
    from ..framings import data_path

    path = data_path(name)
    if not path.exists():
        raise ConscienceError(f"the shipped data file {name} is missing from this install; give the file explicitly")
    return path


def _code_prompts(args):
    from .prompt_files import PromptRecord, read_prompts

    if args.prompts:
        return read_prompts(args.prompts, column=args.column or "prompt", limit=args.limit)
    from ..tasks.code_hacking import generate_tasks, split_tasks

    _, test = split_tasks(generate_tasks())
    records = [PromptRecord(t.id, [{"role": "user", "content": t.request}], {"vuln_class": t.vuln_class, "cwe": t.cwe})
               for t in test]
    return records[:args.limit] if args.limit else records


def _run_one(args, cfg, out: Path) -> dict:
    from ..models import load_model
    from .reports import write_report
    from .runs import RunDir

    kind = args.eval_kind
    # Inputs first: a bad file fails before a model is loaded.
    if kind == "em":
        from .questions import load_questions

        ids = [s.strip() for s in args.ids.split(",") if s.strip()] if args.ids else None
        inputs = load_questions(args.questions, ids=ids, main_only=args.main_only)
        inputs = inputs[:args.limit] if args.limit else inputs
    elif kind == "code":
        inputs = _code_prompts(args)
    elif kind in DEFAULT_PROMPTS:
        from .prompt_files import read_prompts

        name, column = DEFAULT_PROMPTS[kind]
        inputs = read_prompts(args.prompts or _shared_or_data(name), column=args.column or column, limit=args.limit)
    else:
        from ..discernment import load_triples

        inputs = load_triples(args.triples or _shared_or_data("contrast.jsonl"))
        inputs = inputs[:args.limit] if args.limit else inputs

    url_judge = None
    if getattr(args, "judge_url", None):  # check the endpoint before anything slow happens
        from .judges import OpenAIJudge

        url_judge = OpenAIJudge(args.judge_url, model=args.judge_model, api_key=os.environ.get(args.judge_key_env))
        url_judge.tables(["Reply with the number 1 and nothing else."])
    start = time.perf_counter()
    lm = load_model(cfg.model, dtype=cfg.dtype, threads=cfg.threads, adapter=cfg.adapter)
    log(f"model {lm.identity} loaded in {time.perf_counter() - start:.1f}s")
    info = {"model": lm.identity, "settings": {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
                                               "seed": cfg.seed, "conscience": getattr(args, "conscience", None)}}

    if kind == "discernment":
        from ..verdict.factory import make_reviewer
        from .discernment_eval import reviewer_identity, run_discernment

        reviewer = make_reviewer(cfg, lm)
        run = RunDir(out, kind, reviewer_identity(lm.identity, reviewer), info)
        summary = _guarded(run, lambda: run_discernment(run, reviewer, inputs, args.batch_size))
    else:
        from .judges import make_judge

        judge = url_judge or make_judge(args.judge, None, lm, dtype=cfg.dtype)
        run = RunDir(out, kind, judge.identity, info)
        answerers = _answerers(lm, cfg, args.conscience)
        if kind == "em":
            from .em import run_em

            if len(answerers) > 1:
                raise ConscienceError("eval em takes --conscience on or off (run twice for both)")
            summary = _guarded(run, lambda: run_em(run, next(iter(answerers.values())), judge, inputs, args.n, args.batch_size))
        elif kind == "code":
            from .code_security import run_code

            if len(answerers) > 1:
                raise ConscienceError("eval code takes --conscience on or off (run twice for both)")
            summary = _guarded(run, lambda: run_code(run, next(iter(answerers.values())), inputs, args.batch_size))
        else:
            from .adversarial import run_adversarial

            summary = _guarded(run, lambda: run_adversarial(kind, run, answerers, judge, inputs, args.batch_size))
    summary["model"] = lm.identity
    run.write_summary(summary)
    write_report(out, kind, {**summary, "judge": run.judge}, run.samples())
    log(f"{kind}: {_headline(kind, summary)}; wrote {out}/summary.json and {out}/report.html")
    return {**summary, "judge": run.judge}


def _answerers(lm, cfg, conscience_flag: str) -> dict:
    from .answering import AnswerSettings, make_answerer

    arms = ["off", "on"] if conscience_flag == "both" else [conscience_flag]
    out = {}
    for arm in arms:
        conscience = None
        if arm == "on":
            from ..conscience import build_conscience

            conscience = build_conscience(cfg, lm)
        settings = AnswerSettings(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=cfg.seed, conscience=arm)
        out[arm] = make_answerer(lm, settings, conscience)
    return out


def _guarded(run, body):
    """Run an eval; on a user-facing failure say how much was kept and how to resume."""
    try:
        return body()
    except ConscienceError as exc:
        kept = len(run.samples())
        raise ConscienceError(f"{exc}\n  {kept} finished sample(s) are kept in {run.samples_path}; "
                              "rerun the same command to resume") from None
    except KeyboardInterrupt:
        print(f"conscience: interrupted; {len(run.samples())} finished sample(s) kept in {run.samples_path}", file=sys.stderr)
        raise


def _headline(kind: str, summary: dict) -> str:
    from .reports import HEADLINE

    key = HEADLINE[kind]
    value = summary.get(key)
    text = f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
    if kind == "em":
        cs = summary.get("coherent_share")
        text += f" [{summary['ci_low']:.3f}, {summary['ci_high']:.3f}] n={summary['n']} coherent_share=" + (f"{cs:.3f}" if cs is not None else "–")
    if kind == "discernment":
        text += f" auc={summary['auc']:.3f}"
    return text
