"""The recover scenario: continue a misaligned checkpoint with the conscience term on general
prompts, and measure it before and after (the checkpoint itself is the base and the judge)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..errors import ConscienceError
from ..models import LoadedModel, with_adapter
from .config import ExperimentConfig
from .evaluate import em_questions, evaluate_arm, score_base_drift
from .runner import ModelFactory, Stages, default_factory, ensure_data, finish, prepare_out, train_arm


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
    top = Stages(out)
    base_scores = top.result("drift_base") or top.finish("drift_base", score_base_drift(cfg, factory(str(merged))))
    runs = []
    for seed in cfg.seeds:
        root = out / f"seed{seed}"
        stages = Stages(root)
        before = stages.result("before") or stages.finish(
            "before", evaluate_arm(cfg, factory(str(merged)), seed, root / "before", data, questions, base_scores,
                                   is_base=True))
        runs.append({"arm": "checkpoint", "seed": seed, "train": None, "eval": before})
        trained = stages.result("train") or stages.finish("train", train_arm(
            cfg, "conscience", seed, root / "conscience", data, _merged_factory(factory, merged), questions, None,
            base_scores=base_scores, align_prompts="general", max_steps=cfg.recover_steps))
        after = stages.result("after") or stages.finish(
            "after", evaluate_arm(cfg, _merged_factory(factory, merged)(trained["final"]), seed, root / "after", data,
                                  questions, base_scores))
        runs.append({"arm": "checkpoint + conscience", "seed": seed, "train": trained, "eval": after})
    return finish(cfg, out, runs, questions_source, command)


def merge_checkpoint(lm: LoadedModel, out: Path) -> None:
    """Fold a LoRA checkpoint into full weights: the recovered model starts from them and its
    frozen copy (judge and DPO reference) is that misaligned model itself."""
    from ..jsonl import atomic_folder

    model = lm.model.merge_and_unload() if hasattr(lm.model, "merge_and_unload") else lm.model
    with atomic_folder(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        lm.tokenizer.save_pretrained(tmp)


def _merged_factory(factory: ModelFactory, merged: Path) -> ModelFactory:
    """Weights relative to the merged start model: None → it, an adapter → on top of it."""
    def build(weights: str | None) -> LoadedModel:
        return with_adapter(factory(str(merged)), weights)

    return build
