"""Preference pairs per second: our online loop vs TRL's OnlineDPOTrainer, same model and prompts.

Both sides start from the bundled model with a fresh LoRA adapter (reference = adapter
disabled), see the same prompt batches, sample 2 answers per prompt with the same token budget
and take one DPO step per batch. TRL (``trl.experimental.online_dpo.OnlineDPOTrainer`` in trl
1.16) ranks its two samples with a reward function — here the conscience verdict, computed by
a separate frozen copy of the base model — and makes one pair per prompt. Ours makes pairs
only from flagged samples, each with a reviewed alternative written by the frozen copy.

    python benchmarks/vs_trl.py --rounds 4 --out vs_trl.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from conscience.jsonl import write_json_atomic

REPO = Path(__file__).resolve().parents[1]


def prompt_pool(n: int) -> list[str]:
    from conscience.framings import data_path
    from conscience.tasks.code_hacking import generate_tasks
    from conscience.training.data import general_prompts

    task = [t.request for t in generate_tasks(n_per_class=3, seed=0)]
    general = general_prompts() if data_path("alignment_prompts.yaml").exists() else []
    mixed = [p for pair in zip(task, general, strict=False) for p in pair] + task[len(general):]
    return mixed[:n]


def reviewer_for(judge):
    from conscience.conscience_config import ConscienceConfig
    from conscience.verdict.factory import make_reviewer

    return make_reviewer(ConscienceConfig(framings=["aligned", "secure_code"]), judge)


def ours(prompts, batch, rounds, args) -> dict:
    from conscience.chat_data import pad_batch
    from conscience.losses import dpo_loss
    from conscience.models import frozen, load_model
    from conscience.training.config import TrainConfig
    from conscience.training.data import pair_examples
    from conscience.training.online import online_round
    from conscience.training.run import apply_lora
    from conscience.training.trainer import pair_logps

    cfg = TrainConfig(lora_targets=["q_proj", "k_proj", "v_proj", "o_proj"])
    lm = apply_lora(load_model("bundled"), cfg)
    reviewer = reviewer_for(lm)  # the same module: its adapter is disabled while it judges
    opt = torch.optim.AdamW([p for p in lm.model.parameters() if p.requires_grad], lr=args.lr)
    pairs_total, start = 0, time.perf_counter()
    for r in range(rounds):
        chunk = prompts[r * batch:(r + 1) * batch]
        result = online_round(lm, lm, reviewer, chunk, k=2, seed=r, writer="frozen",
                              max_new_tokens=args.max_new_tokens, alt_max_new_tokens=args.max_new_tokens,
                              margin=args.margin)
        pairs_total += len(result.pairs)
        if result.pairs:
            b = pad_batch(pair_examples(lm.tokenizer, result.pairs, 256), lm.tokenizer.pad_token_id)
            lm.model.train()
            logits = lm.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            with frozen(lm.model) as ref:
                ref_logits = ref(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            losses, _, _ = dpo_loss(*pair_logps(logits, b), *pair_logps(ref_logits, b), beta=0.1)
            opt.zero_grad()
            losses.mean().backward()
            opt.step()
    seconds = time.perf_counter() - start
    return {"pairs": pairs_total, "seconds": seconds, "pairs_per_second": pairs_total / seconds}


def theirs(prompts, batch, rounds, args) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from conscience.models import load_model
    from conscience.verdict import ReviewItem

    judge = load_model("bundled")  # the conscience as a reward: a frozen copy of the base model
    reviewer = reviewer_for(judge)
    policy = load_model("bundled")

    def conscience_reward(prompts, completions, **kwargs):
        items = [ReviewItem(p[-1]["content"], c[-1]["content"] if isinstance(c, list) else c)
                 for p, c in zip(prompts, completions, strict=True)]
        return [v.score for v in reviewer.review(items)]

    data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts[:batch * rounds]])
    out = tempfile.mkdtemp(prefix="vs_trl.")
    cfg = OnlineDPOConfig(output_dir=out, per_device_train_batch_size=batch, max_steps=rounds, learning_rate=args.lr,
                          max_new_tokens=args.max_new_tokens, max_length=512, temperature=1.0, beta=[0.1],
                          report_to=[], logging_steps=1, save_strategy="no", use_cpu=True, seed=0,
                          disable_tqdm=True, dataloader_num_workers=0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    trainer = OnlineDPOTrainer(model=policy.model, reward_funcs=[conscience_reward], args=cfg, train_dataset=data,
                               processing_class=policy.tokenizer, peft_config=lora)
    start = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - start
    pairs = batch * rounds  # one (chosen, rejected) pair per prompt per step
    return {"pairs": pairs, "seconds": seconds, "pairs_per_second": pairs / seconds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=2, help="prompts per round/step")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--margin", type=float, default=0.05)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import trl.experimental.online_dpo  # noqa: F401
    except ImportError:
        print("trl.experimental.online_dpo is not available in this trl; nothing to compare against")
        return 1
    prompts = prompt_pool(args.batch * args.rounds)
    a = ours(prompts, args.batch, args.rounds, args)
    b = theirs(prompts, args.batch, args.rounds, args)
    speedup = a["pairs_per_second"] / b["pairs_per_second"] if b["pairs_per_second"] else float("nan")
    print(f"{'trainer':<22}{'pairs':>7}{'seconds':>10}{'pairs/s':>10}")
    print(f"{'ours':<22}{a['pairs']:>7}{a['seconds']:>10.1f}{a['pairs_per_second']:>10.3f}")
    print(f"{'trl OnlineDPOTrainer':<22}{b['pairs']:>7}{b['seconds']:>10.1f}{b['pairs_per_second']:>10.3f}")
    print(f"speedup_vs_trl = {speedup:.2f} (target >= 1.5)")
    if args.out:
        write_json_atomic(args.out, {"speedup_vs_trl": speedup, "ours": a, "trl": b, "rounds": args.rounds,
                                     "batch": args.batch, "max_new_tokens": args.max_new_tokens,
                                     "threads": args.threads, "device": "cpu"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
