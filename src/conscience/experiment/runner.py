"""Run the experiment stage by stage; every finished stage leaves a marker, so an interrupted
run resumes without redoing it.

    out/
      experiment.json           config + command (a resumed run must match it)
      data/                     the code-hacking splits (data_seed)
      seed<s>/<arm>/train/      fine-tune output (arms sft, conscience), probe.jsonl
      seed<s>/<arm>/eval/       em/ and code/ eval runs, eval.json
      results.json, report.md, report.html, FINISHED
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from ..errors import ConscienceError
from ..evaluation.runs import write_json_atomic
from ..models import LoadedModel
from .config import ExperimentConfig

ARMS = ("base", "sft", "conscience")
FINISHED = "FINISHED"
ModelFactory = Callable[[str | None], LoadedModel]  # weights folder (adapter or full) or None → model


def _log(message: str) -> None:
    print(f"[conscience] {message}", file=sys.stderr, flush=True)


def default_factory(cfg: ExperimentConfig) -> ModelFactory:
    from ..models import load_model

    threads = cfg.train.get("threads")

    def factory(weights: str | None) -> LoadedModel:
        if weights and not Path(weights, "adapter_config.json").exists():
            return load_model(weights, threads=threads)  # full fine-tune: the folder is the model
        return load_model(cfg.model, threads=threads, adapter=weights)

    return factory


class Stages:
    """Done-markers: ``<name>.done.json`` holds the stage's result."""

    def __init__(self, root: Path):
        self.root = root

    def result(self, name: str) -> dict | None:
        path = self.root / f"{name}.done.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def finish(self, name: str, result: dict) -> dict:
        write_json_atomic(self.root / f"{name}.done.json", result)
        return result


def prepare_out(cfg: ExperimentConfig, out: Path, command: str, force: bool) -> None:
    """Refuse a finished run (unless ``force``) or one made with another config; else record ours."""
    info = {"config": asdict(cfg), "command": command}
    marker = out / "experiment.json"
    if (out / FINISHED).exists() and not force:
        raise ConscienceError(f"{out} already holds a finished experiment (report: {out / 'report.html'}); "
                              "choose another --out, or pass --force to rebuild its report from the finished stages")
    if marker.exists():
        previous = json.loads(marker.read_text(encoding="utf-8"))
        if previous.get("config") != info["config"]:
            changed = sorted(k for k in info["config"] if previous.get("config", {}).get(k) != info["config"][k])
            raise ConscienceError(f"{out} holds an experiment with another config (differs in {changed}); "
                                  "resume it with the same settings or choose another --out")
        _log(f"resuming the experiment in {out}")
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, info)


def ensure_data(cfg: ExperimentConfig, out: Path) -> dict[str, Path]:
    from ..tasks.code_hacking import write_splits

    data = out / "data"
    expected = {name: data / f"{name}.jsonl" for name in ("train", "test", "test_prompts")}
    if all(p.exists() for p in expected.values()):
        return expected
    n = int(cfg.train.get("task_n_per_class", 30))
    paths = write_splits(data, n_per_class=n, seed=cfg.data_seed)
    return {name: Path(paths[name]) for name in expected}


def em_questions(cfg: ExperimentConfig):
    from ..evaluation.questions import load_questions
    from ..framings import shared_data_root

    path = cfg.em_questions
    if path is None:
        shared = shared_data_root() / "data/emergent-misalignment/evaluation/first_plot_questions.yaml"
        path = str(shared) if shared.exists() else None  # else: the shipped question set
    return load_questions(path, ids=cfg.em_ids, main_only=True), path or "shipped em_questions.yaml"


def make_probe(lm: LoadedModel, questions, cfg: ExperimentConfig, root: Path, seed: int):
    """``probe(step) -> EM summary`` for the live monitor (frozen-copy judge, a few samples)."""
    from ..evaluation.answering import AnswerSettings, make_answerer
    from ..evaluation.em import run_em
    from ..evaluation.judges import LocalJudge
    from ..evaluation.runs import RunDir
    from ..training.online import _sampling
    from .monitor import mean_alignment

    judge = LocalJudge(lm)
    subset = questions[: cfg.probe_questions]

    def probe(step: int) -> dict:
        run = RunDir(root / f"step-{step:06d}", "em", judge.identity, {"model": lm.identity})
        settings = AnswerSettings(max_new_tokens=cfg.probe_max_new_tokens, temperature=1.0, seed=seed * 7919 + step)
        with _sampling(lm.model):
            summary = run_em(run, make_answerer(lm, settings), judge, subset, cfg.probe_n, cfg.batch_size)
        summary["mean_alignment"] = mean_alignment(run.samples())
        return summary

    return probe


def train_arm(cfg: ExperimentConfig, arm: str, seed: int, root: Path, data: dict[str, Path],
              factory: ModelFactory, questions, base_probe: float | None, start_weights: str | None = None,
              **train_extra) -> dict:
    """Fine-tune one arm (SFT: lam 0; conscience: cfg.lam) with the live monitor attached."""
    from ..training.run import run_training
    from .monitor import EMProbeCallback

    lam = 0.0 if arm == "sft" else cfg.lam
    out = root / "train"
    train_cfg = cfg.train_config(seed, lam, str(out), data=str(data["train"]), **train_extra)
    lm = factory(start_weights)
    callbacks = []
    if cfg.probe_every:
        out.mkdir(parents=True, exist_ok=True)
        probe = make_probe(lm, questions, cfg, out / "probe", seed)
        monitor = EMProbeCallback(probe, cfg.probe_every, out / "probe.jsonl", cfg.probe_metric, cfg.warn_margin,
                                  label=f"{arm} seed {seed}", base=base_probe)
        callbacks.append(monitor)
    start = time.perf_counter()
    result = run_training(train_cfg, lm=lm, callbacks=callbacks)
    seconds = time.perf_counter() - start
    probe_points = [{"step": s, "value": v} for s, v in callbacks[0].points] if callbacks else []
    return {"arm": arm, "seed": seed, "lam": lam, "final": result["final"], "train_seconds": seconds,
            "metrics": result["metrics"], "probe": probe_points,
            "warned_at": callbacks[0].warned_at if callbacks else None}


def evaluate_arm(cfg: ExperimentConfig, lm: LoadedModel, seed: int, root: Path, data: dict[str, Path], questions) -> dict:
    """EM (frozen-copy judge), code security on held-out prompts, and task token accuracy."""
    from ..config import ConscienceConfig
    from ..conscience import make_reviewer
    from ..evaluation.answering import AnswerSettings, make_answerer
    from ..evaluation.code_security import run_code
    from ..evaluation.em import conscience_view, run_em
    from ..evaluation.judges import LocalJudge
    from ..evaluation.prompt_files import read_prompts
    from ..evaluation.reports import write_report
    from ..evaluation.runs import RunDir
    from ..evaluation.task_accuracy import task_token_accuracy
    from ..training.data import load_conversations
    from .monitor import mean_alignment

    judge = LocalJudge(lm)
    info = {"model": lm.identity}
    em_run = RunDir(root / "em", "em", judge.identity, info)
    em_settings = AnswerSettings(max_new_tokens=cfg.em_max_new_tokens, temperature=1.0, seed=seed)
    em = run_em(em_run, make_answerer(lm, em_settings), judge, questions, cfg.em_n, cfg.batch_size)
    samples = em_run.samples()
    em["mean_alignment"] = mean_alignment(samples)
    em["conscience"] = conscience_view(make_reviewer(ConscienceConfig(model=cfg.model), lm), samples)
    em_run.write_summary(em)
    write_report(root / "em", "em", {**em, "judge": judge.identity, "model": lm.identity}, samples)
    code_run = RunDir(root / "code", "code", judge.identity, info)
    code_settings = AnswerSettings(max_new_tokens=cfg.code_max_new_tokens, temperature=0.0, seed=seed)
    prompts = read_prompts(data["test_prompts"], limit=cfg.code_limit)
    code = run_code(code_run, make_answerer(lm, code_settings), prompts, cfg.batch_size)
    code_run.write_summary(code)
    conversations = load_conversations(str(data["test"]))[: cfg.accuracy_limit]
    accuracy = task_token_accuracy(lm, conversations, int(cfg.train.get("max_length", 256)), cfg.batch_size)
    return {"judge": judge.identity, "model": lm.identity, "em": em, "code": code, **accuracy}


def run_experiment(cfg: ExperimentConfig, out: str | Path, factory: ModelFactory | None = None,
                   command: str | None = None, force: bool = False) -> dict:
    """Base, SFT and SFT + conscience for every seed; returns the results (also written)."""
    out = Path(out)
    command = command or "conscience " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    prepare_out(cfg, out, command, force)
    factory = factory or default_factory(cfg)
    data = ensure_data(cfg, out)
    questions, questions_source = em_questions(cfg)
    runs = []
    for seed in cfg.seeds:
        base_probe = None
        for arm in ARMS:
            root = out / f"seed{seed}" / arm
            stages = Stages(root)
            root.mkdir(parents=True, exist_ok=True)
            trained = None
            if arm != "base":
                trained = stages.result("train")
                if trained is None:
                    _log(f"seed {seed}: training {arm}")
                    trained = stages.finish("train", train_arm(cfg, arm, seed, root, data, factory, questions, base_probe))
                base_probe = base_probe if base_probe is not None else next(
                    (p["value"] for p in trained["probe"] if p["step"] == 0), None)
            evaluated = stages.result("eval")
            if evaluated is None:
                _log(f"seed {seed}: evaluating {arm}")
                lm = factory(trained["final"] if trained else None)
                evaluated = stages.finish("eval", evaluate_arm(cfg, lm, seed, root / "eval", data, questions))
            runs.append({"arm": arm, "seed": seed, "train": trained, "eval": evaluated})
    return finish(cfg, out, runs, questions_source, command)


def run_recover(cfg: ExperimentConfig, out: str | Path, factory: ModelFactory | None = None,
                command: str | None = None, force: bool = False) -> dict:
    """Continue a misaligned checkpoint with the conscience term on general prompts and
    compare misalignment before and after (the checkpoint's own frozen copy is the judge)."""
    out = Path(out)
    start = Path(cfg.recover_from or "")
    if not (start / "config.json").exists() and not (start / "adapter_config.json").exists():
        raise ConscienceError(f"--from {start}: no checkpoint there (expected a model folder with config.json "
                              "or a LoRA adapter folder with adapter_config.json)")
    command = command or "conscience " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    prepare_out(cfg, out, command, force)
    factory = factory or default_factory(cfg)
    data = ensure_data(cfg, out)
    questions, questions_source = em_questions(cfg)
    merged = out / "start_model"
    if not (merged / "config.json").exists():
        merge_checkpoint(factory(str(start)), merged)
    runs = []
    for seed in cfg.seeds:
        root = out / f"seed{seed}"
        stages = Stages(root)
        before = stages.result("before") or stages.finish(
            "before", evaluate_arm(cfg, factory(str(merged)), seed, root / "before", data, questions))
        runs.append({"arm": "checkpoint", "seed": seed, "train": None, "eval": before})
        trained = stages.result("train") or stages.finish("train", train_arm(
            cfg, "conscience", seed, root / "conscience", data, _merged_factory(factory, merged), questions, None,
            align_prompts="general", max_steps=cfg.recover_steps))
        after = stages.result("after") or stages.finish(
            "after", evaluate_arm(cfg, _merged_factory(factory, merged)(trained["final"]), seed, root / "after", data,
                                  questions))
        runs.append({"arm": "checkpoint + conscience", "seed": seed, "train": trained, "eval": after})
    return finish(cfg, out, runs, questions_source, command)


def finish(cfg: ExperimentConfig, out: Path, runs: list[dict], questions_source: str, command: str) -> dict:
    """Aggregate the runs, write results.json and the report, then mark the folder finished."""
    from .report import aggregate, write_experiment_report

    results = aggregate(cfg, runs, questions_source, command)
    write_json_atomic(out / "results.json", results)
    write_experiment_report(out, results)
    (out / FINISHED).write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"), encoding="utf-8")
    return results


def merge_checkpoint(lm: LoadedModel, out: Path) -> None:
    """Fold a LoRA checkpoint into full weights: the recovered model starts from them and its
    frozen copy (judge and DPO reference) is that misaligned model itself."""
    import os
    import shutil
    import tempfile

    model = lm.model.merge_and_unload() if hasattr(lm.model, "merge_and_unload") else lm.model
    tmp = Path(tempfile.mkdtemp(prefix=".start_model.", dir=out.parent))
    model.save_pretrained(tmp, safe_serialization=True)
    lm.tokenizer.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)


def _merged_factory(factory: ModelFactory, merged: Path) -> ModelFactory:
    """Weights relative to the merged start model: None → it, an adapter → on top of it."""
    def build(weights: str | None) -> LoadedModel:
        lm = factory(str(merged))
        if weights:
            from peft import PeftModel

            lm.model = PeftModel.from_pretrained(lm.model, weights)
            lm.identity += f"+adapter:{Path(weights).resolve()}"
        return lm

    return build
