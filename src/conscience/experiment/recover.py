"""The recover scenario: from a drifted checkpoint, each arm's method alone (no task loss) for
``recover_steps`` steps, measured before and after against the model the checkpoint was
fine-tuned from. With ``recover_reference: checkpoint`` the checkpoint is all a recovering model
has: its own frozen copy is the conscience, the DPO and KL reference and the writer of the aligned
answers that mixing trains on; with ``base`` the checkpoint's LoRA adapter trains on and the frozen
copy is the base with it disabled, as in the training term."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..errors import ConscienceError
from ..log import log
from ..models import LoadedModel, is_adapter, with_adapter
from .config import ExperimentConfig
from .evaluate import em_questions, evaluate_arm, score_base_drift
from .runner import ModelFactory, Stages, default_factory, ensure_data, finish, prepare_out, train_arm


def run_recover(cfg: ExperimentConfig, out: str | Path, factory: ModelFactory | None = None,
                command: str | None = None, force: bool = False) -> dict:
    """The checkpoint's row, then one row per arm of ``cfg.arms`` trained from it on general prompts
    without the task loss; drift is read against ``cfg.model`` (the checkpoint's own drift is its
    starting point) and each arm's live monitor records the curve back every ``probe_every`` steps."""
    out = Path(out)
    start = Path(cfg.recover_from or "")
    if not (start / "config.json").exists() and not (start / "adapter_config.json").exists():
        raise ConscienceError(f"--from {start}: no checkpoint there (expected a model folder with config.json "
                              "or a LoRA adapter folder with adapter_config.json)")
    if cfg.recover_reference == "base" and not is_adapter(start):
        raise ConscienceError(f"--from {start}: recover_reference base continues a LoRA adapter of the model "
                              "(adapter_config.json); a full-weights checkpoint has no base to disable it to")
    command = command or "conscience " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    prepare_out(cfg, out, command, force)
    factory = factory or default_factory(cfg)
    data = ensure_data(cfg, out)
    questions, questions_source = em_questions(cfg)
    if cfg.recover_reference == "base":  # the adapter trains on; arms' weights are adapters on the base
        from_checkpoint, start_weights = factory, str(start)
    else:
        merged = out / "start_model"
        if not (merged / "config.json").exists():
            merge_checkpoint(factory(str(start)), merged)
        from_checkpoint, start_weights = _merged_factory(factory, merged), None
    top = Stages(out)
    base_scores = top.result("drift_base")
    if base_scores is None:
        log("scoring the model the checkpoint was fine-tuned from on the drift triples")
        base_scores = top.finish("drift_base", score_base_drift(cfg, factory(None)))
    runs = []
    for seed in cfg.seeds:
        for arm in ("checkpoint", *cfg.arms):
            root = out / f"seed{seed}" / arm
            stages = Stages(root)
            trained = None
            if arm != "checkpoint":
                trained = stages.result("train")
                if trained is None:
                    log(f"seed {seed}: recovering with {arm}")
                    trained = stages.finish("train", train_arm(
                        cfg, arm, seed, root, data, from_checkpoint, questions, None, start_weights=start_weights,
                        base_scores=base_scores, align_prompts="general", max_steps=cfg.recover_steps,
                        task_loss=False))
            evaluated = stages.result("eval") or stages.finish("eval", evaluate_arm(
                cfg, from_checkpoint(trained["final"] if trained else start_weights), seed, root / "eval", data,
                questions, base_scores))
            runs.append({"arm": arm if arm == "checkpoint" else f"checkpoint + {arm}", "seed": seed,
                         "train": trained, "eval": evaluated})
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
