"""``run_training``: config → model (+LoRA) → task data → ConscienceTrainer → checkpoint + card.

Output folder: ``final/`` (LoRA adapter or full weights, safetensors, loadable with
``PeftModel.from_pretrained`` / ``from_pretrained``; written atomically), ``metrics.jsonl``
(one line per step), ``README.md`` (model card with config and final metrics),
``train_config.yaml`` (the config), ``checkpoint-N/`` (Trainer checkpoints), when the config names no
data, ``data/`` (the code-hacking splits the run was trained on), and with ``kl_coef`` or
``mix_aligned`` the cached aligned answers (``aligned_answers.json``, see :mod:`.aligned`).
``train_config.yaml`` is written first: it marks the folder as a run of this project, the only
kind of existing non-empty folder a run writes into. Resuming verifies checkpoints
(:mod:`.checkpoints`); resuming a run that already reached ``max_steps`` trains nothing.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import yaml

from ..chat_data import build_task_data, load_conversations
from ..errors import ConscienceError
from ..jsonl import atomic_folder, read_jsonl, write_text_atomic
from ..log import log
from ..models import LoadedModel, load_model
from .checkpoints import TRAINER_STATE, checkpoint_folders, latest_intact, model_files, verify_checkpoint
from .config import TrainConfig
from .data import ChatCollator, ListDataset, alignment_prompts, with_system_prompt
from .trainer import ConscienceTrainer, final_metrics

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "train_config.yaml"
FINAL_DIR = "final"


def task_source(cfg: TrainConfig, out_dir: Path) -> str:
    """The task data file: the config's, or the code-hacking generator's train split."""
    if cfg.data:
        return cfg.data
    try:
        from ..tasks.code_hacking import write_splits
    except ImportError as exc:
        raise ConscienceError(f"no data given and the code-hacking generator is unavailable ({exc})") from None
    paths = write_splits(out_dir / "data", n_per_class=cfg.task_n_per_class, seed=cfg.seed)
    return str(paths["train"])


def apply_lora(lm: LoadedModel, cfg: TrainConfig) -> LoadedModel:
    """Wrap the model with a fresh LoRA adapter (the base weights stay frozen)."""
    from peft import LoraConfig, get_peft_model

    if hasattr(lm.model, "peft_config"):
        # an adapter loaded with the model keeps training (PEFT loads it frozen); the reference is its base
        for name, param in lm.model.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)
        lm.model.train()
        return lm
    present = {name.split(".")[-1] for name, _ in lm.model.named_modules()}
    missing = [t for t in cfg.lora_targets if t not in present]
    if missing:
        raise ConscienceError(f"lora_targets {missing} are not modules of this model")
    peft_cfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=list(cfg.lora_targets), task_type="CAUSAL_LM")
    model = get_peft_model(lm.model, peft_cfg)
    return LoadedModel(model=model, tokenizer=lm.tokenizer, spec=lm.spec, identity=lm.identity)


def training_arguments(cfg: TrainConfig, out_dir: Path):
    from transformers import TrainingArguments

    return TrainingArguments(**_args_dict(cfg, out_dir))


def _args_dict(cfg: TrainConfig, out_dir: Path) -> dict:
    return dict(
        # with mix_aligned the trainer adds mix_rows aligned rows to each batch; dropping a short
        # last batch keeps the aligned share of every batch exact
        output_dir=str(out_dir), max_steps=cfg.max_steps, per_device_train_batch_size=cfg.batch_size - cfg.mix_rows,
        dataloader_drop_last=cfg.mix_rows > 0,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, lr_scheduler_type=cfg.lr_schedule,
        warmup_steps=cfg.warmup_steps, weight_decay=cfg.weight_decay, seed=cfg.seed, data_seed=cfg.seed,
        logging_steps=cfg.logging_steps, save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500, save_total_limit=cfg.save_total_limit,
        report_to=list(cfg.report_to) or "none", remove_unused_columns=False, dataloader_num_workers=0,
        disable_tqdm=True,
        # No accelerator: say so, so that `accelerate launch --multi_gpu`/torchrun processes join a gloo group.
        use_cpu=not _has_accelerator(),
    )


def _has_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


def check_output_dir(cfg: TrainConfig) -> Path:
    """The run's folder. Training writes README.md, metrics and checkpoints into it, so an empty name
    (the current folder) and a folder holding anything but a run of this project are refused."""
    if not cfg.output_dir.strip():
        raise ConscienceError("output_dir is empty; name the folder the run writes into (e.g. output_dir=runs/my_run)")
    out_dir = Path(cfg.output_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConscienceError(f"output_dir {out_dir} is a file, not a folder")
    # rank 0 alone: the other processes of a launch would see rank 0's config half-written
    if first_process() and out_dir.is_dir() and any(out_dir.iterdir()) and not is_run_folder(out_dir):
        raise ConscienceError(f"output_dir {out_dir} holds files that are not from a conscience training run "
                              f"(no {CONFIG_FILE}, {METRICS_FILE} or checkpoint-N); choose a new or empty folder")
    return out_dir


def first_process() -> bool:
    """A single process, or rank 0 of a launch (torchrun and accelerate set RANK): the one that
    writes the run folder's own files before the Trainer exists."""
    return os.environ.get("RANK", "0") == "0"


def is_run_folder(folder: Path) -> bool:
    """A folder an earlier ``conscience train`` wrote: its config (written first), metrics or checkpoints."""
    from .aligned import CACHE_FILE

    return (any((folder / name).is_file() for name in (CONFIG_FILE, METRICS_FILE, CACHE_FILE))
            or bool(checkpoint_folders(folder)))


def needs_conscience_state(cfg: TrainConfig) -> bool:
    """The run keeps state of its own across steps (the pair buffer, the gap-selected aligned rows),
    so a checkpoint without it would resume differently."""
    return not cfg.sft_only or (cfg.mix_rows > 0 and cfg.mix_select == "gap")


def resume_checkpoint(cfg: TrainConfig, out_dir: Path) -> tuple[str | None, int]:
    """(checkpoint, its global step) to resume from, ``(None, 0)`` for a fresh run.

    ``resume: latest`` → the newest intact ``checkpoint-N`` in the output folder (newer damaged or
    incomplete ones are named in warnings); ``auto`` → the same, or a fresh run when the folder has
    no checkpoint at all; otherwise the path given, which must verify.
    """
    if not cfg.resume:
        return None, 0
    needs_state = needs_conscience_state(cfg)
    if cfg.resume in ("latest", "auto", "true"):
        found = latest_intact(out_dir, needs_state)
        if found is not None:
            return str(found[0]), found[1]
        if not checkpoint_folders(out_dir):
            if cfg.resume == "auto":
                return None, 0
            raise ConscienceError(f"resume: {cfg.resume}, but {out_dir} holds no checkpoint-N folder")
        raise ConscienceError(f"resume: {cfg.resume}, but no checkpoint in {out_dir} is intact (see the warnings)")
    if not Path(cfg.resume).is_dir():
        raise ConscienceError(f"resume: {cfg.resume} is not a folder")
    return cfg.resume, verify_checkpoint(cfg.resume, needs_state)


def _trim_metrics(path: Path, upto_step: int) -> None:
    """On resume, drop logged steps past the checkpoint: they are about to be redone (and a line
    torn by the kill is dropped too)."""
    if not path.exists():
        return
    keep = [record for _, record in read_jsonl(path, allow_torn_tail=True) if record["step"] <= upto_step]
    write_text_atomic(path, "".join(json.dumps(record) + "\n" for record in keep))


def run_training(cfg: TrainConfig, lm: LoadedModel | None = None, callbacks: Sequence = ()) -> dict:
    """Train as ``cfg`` says; returns ``{"output_dir", "final", "metrics"}``.

    ``lm`` replaces loading ``cfg.model`` (tests pass a tiny model); ``callbacks`` are extra
    ``TrainerCallback`` objects (e.g. an EM-probe monitor). ``stop_on_drift`` needs one with a
    true ``stop`` attribute (the drift monitor); its ``stopped_at`` is returned.
    """
    from transformers import set_seed

    stoppers = [cb for cb in callbacks if getattr(cb, "stop", False)]
    if cfg.stop_on_drift and not stoppers:
        raise ConscienceError("stop_on_drift needs the live drift monitor, which conscience train does not run; "
                              "use conscience experiment (the early arm)")
    out_dir = check_output_dir(cfg)
    checkpoint, resumed_step = resume_checkpoint(cfg, out_dir)
    if checkpoint and resumed_step >= cfg.max_steps:
        return finished_run(cfg, out_dir, checkpoint, resumed_step, lm)
    out_dir.mkdir(parents=True, exist_ok=True)
    if first_process():
        write_text_atomic(out_dir / CONFIG_FILE, config_yaml(cfg))  # first: it marks the folder as a run of ours
    set_seed(cfg.seed)
    if lm is None:
        lm = load_model(cfg.model, dtype=cfg.dtype, threads=cfg.threads)
    lm.tokenizer.padding_side = "left"  # generation pads left; the training collator pads itself
    conversations = load_conversations(task_source(cfg, out_dir), cfg.data_split)
    if cfg.max_examples:
        conversations = conversations[: cfg.max_examples]
    if cfg.system_prompt:  # training only: evaluation reads the data files, never this config
        conversations = with_system_prompt(conversations, cfg.system_prompt)
    data = build_task_data(lm.tokenizer, conversations, cfg.max_length)
    reference = None
    if cfg.lora:
        lm = apply_lora(lm, cfg)
        frozen = lm  # the same module; its adapter is disabled whenever it reviews, writes or is the reference
    else:
        # Full fine-tuning: the frozen copy is a deep copy of the starting weights (one more copy in RAM).
        reference = copy.deepcopy(lm.model).eval().requires_grad_(False)
        frozen = LoadedModel(reference, lm.tokenizer, lm.spec, lm.identity + ":frozen-start")
    lm.model.train()
    reviewer, pool, aligned = None, [], None
    if not cfg.sft_only or cfg.uses_aligned_answers:
        pool = alignment_prompts(cfg.align_prompts, data.prompts, cfg.general_pool)
    if not cfg.sft_only or cfg.aligned_review:
        from ..verdict.factory import make_reviewer

        reviewer = make_reviewer(cfg.conscience_config(), frozen)
    if cfg.uses_aligned_answers:
        aligned = aligned_pool(cfg, frozen, pool, out_dir, reviewer if cfg.aligned_review else None)
    metrics_path = out_dir / METRICS_FILE
    if checkpoint is None:
        metrics_path.unlink(missing_ok=True)
    trainer = ConscienceTrainer(
        model=lm.model, args=training_arguments(cfg, out_dir), train_dataset=ListDataset(data.examples),
        data_collator=ChatCollator(int(lm.tokenizer.pad_token_id)), callbacks=list(callbacks),
        train_config=cfg, policy=lm, frozen=frozen, reviewer=reviewer, align_pool=pool, metrics_path=metrics_path,
        aligned=aligned,
    )
    if checkpoint:
        if trainer.is_world_process_zero():
            _trim_metrics(metrics_path, resumed_step)
        trainer.load_conscience_state(checkpoint)
        log(f"resuming from {checkpoint} (step {resumed_step})")
    log(f"training {lm.identity}: {len(data.examples)} examples, {cfg.max_steps} steps, lam={cfg.lam}, "
        f"{'LoRA r=' + str(cfg.lora_r) if cfg.lora else 'full fine-tuning'}")
    trainer.train(resume_from_checkpoint=checkpoint)
    metrics = final_metrics(metrics_path)
    final = out_dir / FINAL_DIR
    if trainer.is_world_process_zero():
        save_final(trainer.accelerator.unwrap_model(trainer.model), lm.tokenizer, final)
        write_model_card(out_dir, cfg, lm.identity, metrics)
    trainer.accelerator.wait_for_everyone()
    return {"output_dir": str(out_dir), "final": str(final), "metrics": metrics,
            "log_history": trainer.state.log_history, "stopped_at": stoppers[0].stopped_at if stoppers else None}


def finished_run(cfg: TrainConfig, out_dir: Path, checkpoint: str, step: int, lm: LoadedModel | None) -> dict:
    """``resume`` of a run that already reached max_steps: nothing is trained and no checkpoint is
    rotated away. A kill after the last checkpoint but before ``final/`` was written is finished
    here: ``final/`` is exported from that checkpoint (the weights of the last step)."""
    final = out_dir / FINAL_DIR
    metrics_path = out_dir / METRICS_FILE
    if final.is_dir() or not first_process():
        log(f"{out_dir} already finished: {checkpoint} is at step {step} of max_steps={cfg.max_steps}; "
            "nothing to train (raise max_steps to train further)")
    else:
        log(f"{checkpoint} is at step {step} of max_steps={cfg.max_steps} but {final} is missing; writing it "
            "from that checkpoint, without training")
        if lm is None:
            lm = load_model(cfg.model, dtype=cfg.dtype, threads=cfg.threads)  # for its tokenizer
        with atomic_folder(final) as tmp:
            for path in model_files(checkpoint):
                shutil.copy2(path, tmp / path.name)
            lm.tokenizer.save_pretrained(tmp)
        write_model_card(out_dir, cfg, lm.identity, final_metrics(metrics_path))
    history = json.loads(Path(checkpoint, TRAINER_STATE).read_text(encoding="utf-8")).get("log_history", [])
    return {"output_dir": str(out_dir), "final": str(final), "metrics": final_metrics(metrics_path),
            "log_history": history, "stopped_at": None}


def aligned_pool(cfg: TrainConfig, frozen: LoadedModel, prompts: list[str], out_dir: Path, reviewer=None):
    """The frozen copy's cached answers to up to ``aligned_pool`` of the alignment prompts (a
    seeded choice), tokenized for KL and mixing; with a ``reviewer``, only those it passes."""
    from ..generation import Sampling
    from .aligned import CACHE_FILE, REVIEW_FILE, aligned_answers, build_pool, passed_review, pool_prompts

    chosen = pool_prompts(prompts, cfg.aligned_pool, cfg.seed)
    sampling = Sampling(cfg.alt_max_new_tokens, cfg.sample_temperature, cfg.sample_top_p, cfg.seed)
    answers = aligned_answers(frozen, chosen, sampling, cfg.aligned_cache or out_dir / CACHE_FILE, cfg.sample_dtype)
    if reviewer is not None:
        answers = passed_review(reviewer, answers, out_dir / REVIEW_FILE)
    return build_pool(frozen.tokenizer, answers, cfg.max_length)


def save_final(model, tokenizer, final: Path) -> None:
    """Write weights (safetensors) + tokenizer under a temporary name, then swap it in."""
    with atomic_folder(final) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)


def config_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(asdict(cfg), sort_keys=False)


def write_model_card(out_dir: Path, cfg: TrainConfig, identity: str, metrics: dict) -> None:
    config_text = config_yaml(cfg)
    kind = "LoRA adapter (load with peft.PeftModel.from_pretrained on the base model)" if cfg.lora else \
        "full weights (load with AutoModelForCausalLM.from_pretrained)"
    lines = [
        f"# {Path(cfg.output_dir).name}", "",
        f"Fine-tuned from `{identity}` with `conscience train` "
        f"({'plain SFT' if cfg.sft_only else f'L = L_task + {cfg.lam}·L_DPO, frozen self-copy as judge and reference'}"
        f"{peer_methods(cfg)}).",
        "", f"Weights in `{FINAL_DIR}/`: {kind}. Per-step metrics: `{METRICS_FILE}`.", "",
        "## Final metrics (mean of the last 10 steps)", "",
        "| metric | value |", "|---|---|",
        *[f"| {k} | {v:.4f} |" for k, v in metrics.items()], "",
        "## Config", "", "```yaml", config_text.rstrip(), "```", "",
    ]
    for name, text in (("README.md", "\n".join(lines)), (CONFIG_FILE, config_text)):
        write_text_atomic(out_dir / name, text)


def peer_methods(cfg: TrainConfig) -> str:
    """The peer methods a run uses, for its model card ("" when none)."""
    used = [f"KL to the frozen copy × {cfg.kl_coef}" if cfg.kl_coef else "",
            f"training-only system prompt {cfg.train_system_prompt!r}" if cfg.train_system_prompt else "",
            f"{cfg.mix_rows} of {cfg.batch_size} rows per batch aligned ({cfg.mix_select})" if cfg.mix_rows else "",
            "stopped when the drift interval left 0" if cfg.stop_on_drift else ""]
    used = [u for u in used if u]
    return "; with " + ", ".join(used) if used else ""
