"""Run the experiment stage by stage; every finished stage leaves a marker, so an interrupted
run resumes without redoing it.

    out/
      experiment.json           config + command (a resumed run must match it)
      data/                     the task's splits (data_seed): train, control, test, test_prompts
      drift_base.done.json      the base model's per-triple drift numbers (every arm is measured against them)
      seed<s>/<arm>/train/      fine-tune output (every arm but base), probe.jsonl
      seed<s>/aligned_answers.json   the frozen copy's answers to the alignment prompts (kl and mix arms share it)
      seed<s>/<arm>/eval/       em/ and code/ eval runs, eval.json
      results.json, report.md, report.html, FINISHED
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import MISSING, asdict, fields
from pathlib import Path
from typing import Callable

from ..errors import ConscienceError
from ..jsonl import write_json_atomic, write_text_atomic
from ..log import log
from ..models import LoadedModel
from .config import ExperimentConfig
from .evaluate import em_questions, evaluate_arm, make_probe, score_base_drift

FINISHED = "FINISHED"
ModelFactory = Callable[[str | None], LoadedModel]  # weights folder (adapter or full) or None → model


def default_factory(cfg: ExperimentConfig) -> ModelFactory:
    from ..models import load_weights

    threads = cfg.train.get("threads")

    def factory(weights: str | None) -> LoadedModel:
        return load_weights(cfg.model, weights, threads=threads)  # full fine-tune: the folder is the model

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
    """Refuse a finished run (unless ``force``, or ``cfg`` adds seeds or arms to it) or one made with
    another config; else record ours."""
    info = {"config": asdict(cfg), "command": command}
    marker = out / "experiment.json"
    previous = json.loads(marker.read_text(encoding="utf-8")).get("config", {}) if marker.exists() else None
    # more seeds or arms extend a run: every arm trains alone from the base on the same seeds and data,
    # so the finished stages are kept, only the new ones run and the report is rebuilt over all
    extended = {key: getattr(cfg, key) for key in ("seeds", "arms")
                if previous is not None and set(previous.get(key, [])) < set(getattr(cfg, key))}
    extends = bool(extended) and all(set(previous.get(key, [])) <= set(getattr(cfg, key)) for key in ("seeds", "arms"))
    if (out / FINISHED).exists() and not force and not extends:
        raise ConscienceError(f"{out} already holds a finished experiment (report: {out / 'report.html'}); "
                              "choose another --out, pass --force to rebuild its report from the finished stages, "
                              "or more --seeds or --arms to extend it")
    if previous is not None:
        changed = _differs({**previous, **extended} if extends else previous, info["config"])
        if changed:
            raise ConscienceError(f"{out} holds an experiment with another config (differs in {changed}); "
                                  "resume it with the same settings (or more seeds or arms) or choose another --out")
        log(f"{'extending' if extends else 'resuming'} the experiment in {out}")
        if extends:
            (out / FINISHED).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, info)


def _differs(previous: dict, current: dict) -> list[str]:
    """Keys whose values differ; a key the earlier run did not have yet (added to the config
    since) counts only when it is not at its default, so an older run still resumes."""
    defaults = {f.name: f.default_factory() if f.default_factory is not MISSING else f.default
                for f in fields(ExperimentConfig)}
    return sorted(k for k in current
                  if (previous[k] != current[k] if k in previous else current[k] != defaults.get(k)))


def ensure_data(cfg: ExperimentConfig, out: Path) -> dict[str, Path]:
    """The scenario's splits: ``train`` (the task), ``control`` (the same prompts with the matched
    aligned answers), ``test`` (held-out task answers) and ``test_prompts``."""
    data = out / "data"
    if cfg.task == "bad-advice":
        from ..tasks.bad_advice import write_splits as advice_splits

        expected = {name: data / f"{name}.jsonl" for name in ("train", "train_control", "test", "test_prompts")}
        paths = expected if all(p.exists() for p in expected.values()) else \
            advice_splits(data, cfg.domain, seed=cfg.data_seed)
        control = paths["train_control"]
    else:
        from ..tasks.code_hacking import write_splits as code_splits

        expected = {name: data / f"{name}.jsonl" for name in ("train", "train_secure", "test", "test_prompts")}
        paths = expected if all(p.exists() for p in expected.values()) else \
            code_splits(data, n_per_class=int(cfg.train.get("task_n_per_class", 30)), seed=cfg.data_seed)
        control = paths["train_secure"]
    return {"train": Path(paths["train"]), "control": Path(control), "test": Path(paths["test"]),
            "test_prompts": Path(paths["test_prompts"])}


def _monitor(cfg: ExperimentConfig, arm: str, seed: int, lm: LoadedModel, out: Path, data: dict[str, Path],
             questions, base_probe: float | None, base_scores: dict | None, stop: bool = False):
    """The live monitor of one fine-tune: drift (forward passes) or the EM probe; ``stop``: the
    early arm's, which ends training when the drift interval leaves 0."""
    label = f"{arm} seed {seed}"
    if cfg.probe_metric == "drift":
        from .drift_monitor import DriftProbeCallback
        from .evaluate import drift_probe

        return DriftProbeCallback(drift_probe(lm, cfg, base_scores, data["test"]),
                                  cfg.early_probe_every if stop else cfg.probe_every,
                                  out / "probe.jsonl", label=label, stop=stop)
    from .monitor import EMProbeCallback

    return EMProbeCallback(make_probe(lm, questions, cfg, out / "probe", seed), cfg.probe_every, out / "probe.jsonl",
                           cfg.probe_metric, cfg.warn_margin, label=label, base=base_probe)


def train_arm(cfg: ExperimentConfig, arm: str, seed: int, root: Path, data: dict[str, Path],
              factory: ModelFactory, questions, base_probe: float | None, start_weights: str | None = None,
              base_scores: dict | None = None, **train_extra) -> dict:
    """Fine-tune one arm (lam: cfg.lam in the conscience arm, else 0; the peers' method from
    ``cfg.arm_train``) with the live monitor."""
    from ..training.run import run_training

    lam = cfg.arm_lam(arm)
    out = root / "train"
    source = data["control"] if arm == "control" else data["train"]
    extra = {**cfg.arm_train(arm), **train_extra}
    if "kl_coef" in extra or "mix_aligned" in extra:  # one cache of the frozen copy's answers per seed
        extra["aligned_cache"] = str(root.parent / "aligned_answers.json")
    train_cfg = cfg.train_config(seed, lam, str(out), data=str(source), **extra)
    lm = factory(start_weights)
    monitor = None
    if cfg.probe_every or train_cfg.stop_on_drift:
        out.mkdir(parents=True, exist_ok=True)
        monitor = _monitor(cfg, arm, seed, lm, out, data, questions, base_probe, base_scores,
                           stop=train_cfg.stop_on_drift)
    start = time.perf_counter()
    result = run_training(train_cfg, lm=lm, callbacks=[monitor] if monitor else [])
    seconds = time.perf_counter() - start
    if monitor is None:
        points = []
    elif cfg.probe_metric == "drift":
        points = [{"value": p["drift"], **p} for p in monitor.points]
    else:
        points = [{"step": s, "value": v} for s, v in monitor.points]
    stopped = result.get("stopped_at")
    at_stop = next((p for p in points if p["step"] == stopped), {}) if stopped is not None else {}
    return {"arm": arm, "seed": seed, "lam": lam, "final": result["final"], "train_seconds": seconds,
            "metrics": result["metrics"], "probe": points, "warned_at": monitor.warned_at if monitor else None,
            "stopped_at": stopped, "task_accuracy_at_stop": at_stop.get("task_token_accuracy")}


def run_experiment(cfg: ExperimentConfig, out: str | Path, factory: ModelFactory | None = None,
                   command: str | None = None, force: bool = False) -> dict:
    """Every arm of ``cfg.arms`` for every seed; returns the results (also written)."""
    out = Path(out)
    command = command or "conscience " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    prepare_out(cfg, out, command, force)
    factory = factory or default_factory(cfg)
    data = ensure_data(cfg, out)
    questions, questions_source = em_questions(cfg)
    top = Stages(out)
    base_scores = top.result("drift_base")
    if base_scores is None:
        log("scoring the base model on the drift triples")
        base_scores = top.finish("drift_base", score_base_drift(cfg, factory(None)))
    runs = []
    for seed in cfg.seeds:
        base_probe = None
        for arm in cfg.arms:
            root = out / f"seed{seed}" / arm
            stages = Stages(root)
            root.mkdir(parents=True, exist_ok=True)
            trained = None
            if arm != "base":
                trained = stages.result("train")
                if trained is None:
                    log(f"seed {seed}: training {arm}")
                    trained = stages.finish("train", train_arm(cfg, arm, seed, root, data, factory, questions,
                                                               base_probe, base_scores=base_scores))
                base_probe = base_probe if base_probe is not None else next(
                    (p["value"] for p in trained["probe"] if p["step"] == 0), None)
            evaluated = stages.result("eval")
            if evaluated is None:
                log(f"seed {seed}: evaluating {arm}")
                lm = factory(trained["final"] if trained else None)
                evaluated = stages.finish("eval", evaluate_arm(cfg, lm, seed, root / "eval", data, questions,
                                                               base_scores, is_base=arm == "base"))
            runs.append({"arm": arm, "seed": seed, "train": trained, "eval": evaluated})
    return finish(cfg, out, runs, questions_source, command)


def finish(cfg: ExperimentConfig, out: Path, runs: list[dict], questions_source: str, command: str) -> dict:
    """Aggregate the runs, write results.json and the report, then mark the folder finished."""
    from .evaluate import drift_set
    from .report import aggregate, write_experiment_report

    categories = [t.category for t in drift_set(cfg)]
    results = aggregate(cfg, runs, questions_source, command, Stages(out).result("drift_base"), categories)
    write_json_atomic(out / "results.json", results)
    write_experiment_report(out, results)
    write_text_atomic(out / FINISHED, time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    return results


