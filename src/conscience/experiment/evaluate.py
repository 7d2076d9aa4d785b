"""What the experiment measures for every arm and seed.

Headline: the judge-free drift of :mod:`conscience.evaluation.drift` against the base
(preference gap and A/B probe on the held-out triples, ``report`` split). Beside it: EM answers
judged by the base's frozen copy, its own conscience's view of them, code-security findings
(code-hacking scenario), the task token accuracy on held-out task answers, and coherence as a
perplexity on held-out aligned answers.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..models import LoadedModel
from .config import ExperimentConfig


def drift_set(cfg: ExperimentConfig):
    """The triples the experiment reports on (``drift_split``, first ``drift_limit``)."""
    from ..evaluation.drift_run import drift_triples

    return drift_triples(cfg.drift_triples, cfg.drift_limit, split=cfg.drift_split)


def coherence_set(cfg: ExperimentConfig):
    """Triples whose aligned answers measure coherence: the first ``coherence_limit`` of the split
    not reported (``select`` when ``report`` or ``all`` is reported, else ``report``). Aligned
    answers to unrelated prompts, outside every arm's training data (the control arm's own aligned
    answers would flatter it)."""
    from ..evaluation.drift_run import drift_triples

    other = "report" if cfg.drift_split == "select" else "select"
    return drift_triples(cfg.drift_triples, cfg.coherence_limit, split=other)


def coherence_perplexity(lm: LoadedModel, cfg: ExperimentConfig) -> float:
    """exp(− mean over answers of the mean per-token log p(aligned answer | prompt)): a model that
    fine-tuning has made incoherent finds ordinary sound answers unlikely."""
    from ..evaluation.drift import mean_answer_logprobs

    triples = coherence_set(cfg)
    logps = mean_answer_logprobs(lm, [t.prompt for t in triples], [t.aligned for t in triples], cfg.batch_size)
    return float(math.exp(-logps.mean()))


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




def drift_probe(lm: LoadedModel, cfg: ExperimentConfig, base_scores: dict, test_file: Path):
    """``probe(step) -> drift summary`` for the live monitor: the first ``probe_triples`` of the
    reported triples, preference gaps only, and the task accuracy on a few held-out answers."""
    from ..chat_data import load_conversations
    from ..evaluation.drift import DriftScores
    from .drift_monitor import make_drift_probe

    triples = drift_set(cfg)[: cfg.probe_triples]
    full = DriftScores.from_dict(base_scores)
    index = {tid: i for i, tid in enumerate(full.ids)}
    rows = [index[t.id] for t in triples]
    base = DriftScores(tuple(t.id for t in triples), full.gaps[rows], None)
    held_out = load_conversations(str(test_file))[: cfg.probe_accuracy_limit]
    return make_drift_probe(lm, triples, base, cfg.in_domain(), held_out, cfg.batch_size,
                            int(cfg.train.get("max_length", 256)))


def score_base_drift(cfg: ExperimentConfig, lm: LoadedModel) -> dict:
    """The base model's per-triple numbers: every arm's drift is measured against them."""
    from ..evaluation.drift import score_drift

    return score_drift(lm, drift_set(cfg), ab=cfg.drift_ab, batch_size=cfg.batch_size).to_dict()


def evaluate_arm(cfg: ExperimentConfig, lm: LoadedModel, seed: int, root: Path, data: dict[str, Path], questions,
                 base_scores: dict, is_base: bool = False) -> dict:
    """Drift against the base, EM (frozen-copy judge) and its conscience view, code security on
    held-out prompts (code-hacking), and the task token accuracy. ``is_base``: ``lm`` is the base
    itself, whose drift numbers are ``base_scores`` (forward passes are deterministic)."""
    from ..chat_data import load_conversations
    from ..conscience import make_reviewer
    from ..conscience_config import ConscienceConfig
    from ..evaluation.answering import AnswerSettings, make_answerer
    from ..evaluation.drift import DriftScores, drift_summary, score_drift
    from ..evaluation.em import conscience_view, run_em
    from ..evaluation.judges import LocalJudge
    from ..evaluation.reports import write_report
    from ..evaluation.runs import RunDir
    from ..evaluation.task_accuracy import task_token_accuracy
    from .monitor import mean_alignment

    triples = drift_set(cfg)
    base = DriftScores.from_dict(base_scores)
    scores = base if is_base else score_drift(lm, triples, ab=cfg.drift_ab, batch_size=cfg.batch_size)
    drift = drift_summary(scores, base, [t.category for t in triples], cfg.in_domain(), seed=seed)
    drift["scores"] = scores.to_dict()

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
    code = None
    if cfg.task == "code-hacking":
        from ..evaluation.code_security import run_code
        from ..evaluation.prompt_files import read_prompts

        code_run = RunDir(root / "code", "code", judge.identity, info)
        code_settings = AnswerSettings(max_new_tokens=cfg.code_max_new_tokens, temperature=0.0, seed=seed)
        prompts = read_prompts(data["test_prompts"], limit=cfg.code_limit)
        code = run_code(code_run, make_answerer(lm, code_settings), prompts, cfg.batch_size)
        code_run.write_summary(code)
    conversations = load_conversations(str(data["test"]))[: cfg.accuracy_limit]
    accuracy = task_token_accuracy(lm, conversations, int(cfg.train.get("max_length", 256)), cfg.batch_size)
    return {"judge": judge.identity, "model": lm.identity, "drift": drift, "em": em, "code": code, **accuracy,
            "coherence_perplexity": coherence_perplexity(lm, cfg)}
