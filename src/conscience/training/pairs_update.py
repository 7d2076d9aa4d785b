"""``train_on_pairs``: a short DPO-only LoRA update from stored pairs (the server's learning mode).

The reference is the base with the adapter disabled, as in online training. The model passed
in is never modified: the update runs on a deep copy (one more copy of the weights in RAM
while it runs) and the result is a PEFT adapter folder, written atomically.
"""

from __future__ import annotations

import copy
import random
from pathlib import Path
from typing import Sequence

import torch

from ..chat_data import pad_batch
from ..errors import ConscienceError
from ..losses import dpo_loss
from ..models import LoadedModel, frozen
from ..pairs import PreferencePair
from .data import pair_examples
from .trainer import TrainingDivergedError, pair_logps


def train_on_pairs(
    lm: LoadedModel,
    pairs: Sequence[PreferencePair],
    out_dir: str | Path,
    steps: int = 10,
    lr: float = 1e-4,
    beta: float = 0.1,
    lora_r: int = 8,
    seed: int = 0,
    batch_size: int = 4,
    max_length: int = 256,
    lora_targets: Sequence[str] = ("q_proj", "k_proj", "v_proj", "o_proj"),
) -> Path:
    """Run ``steps`` AdamW steps of the DPO loss over ``pairs`` and save the adapter to ``out_dir``.

    If ``lm.model`` already carries a LoRA adapter, that adapter keeps training; otherwise a
    fresh one (rank ``lora_r``) is added. Returns ``out_dir``.
    """
    from peft import LoraConfig, get_peft_model

    from .run import save_final

    if not pairs:
        raise ConscienceError("train_on_pairs needs at least one preference pair")
    if steps < 1 or lr <= 0 or beta <= 0 or lora_r < 1:
        raise ConscienceError("train_on_pairs: steps and lora_r must be >= 1; lr and beta must be > 0")
    torch.manual_seed(seed)
    model = copy.deepcopy(lm.model)
    if not hasattr(model, "peft_config"):
        present = {name.split(".")[-1] for name, _ in model.named_modules()}
        targets = [t for t in lora_targets if t in present] or None  # None: peft's default for the architecture
        model = get_peft_model(model, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules=targets,
                                                 task_type="CAUSAL_LM"))
    else:
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    order = list(pairs)
    rng = random.Random(seed)
    model.train()
    for step in range(steps):
        if step % max(len(order) // batch_size, 1) == 0:
            rng.shuffle(order)
        start = (step * batch_size) % len(order)
        chunk = (order + order)[start:start + min(batch_size, len(order))]
        batch = pad_batch(pair_examples(lm.tokenizer, chunk, max_length), int(lm.tokenizer.pad_token_id))
        batch = {k: v.to(lm.device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        chosen, rejected = pair_logps(logits, batch)
        with frozen(model) as reference:
            ref_logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                   use_cache=False).logits
        ref_chosen, ref_rejected = pair_logps(ref_logits, batch)
        losses, _, _ = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, beta)
        loss = losses.mean()
        if not torch.isfinite(loss):
            raise TrainingDivergedError(f"train_on_pairs: the DPO loss is not finite at step {step + 1}; "
                                        "no adapter was written")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    save_final(model, lm.tokenizer, out_dir)
    return out_dir
