"""Decoding speed and fidelity of the online round's generation copies, side by side in one run.

The online round samples answers from a throwaway copy of the policy (``sample_dtype``, see
``conscience.training.online.generation_copy``). For each kind of copy this times the two decodes
of a round on the same prompts with the same forced lengths — ``k × align_batch`` answers of
``sample_max_new_tokens`` tokens, then one alternative of ``alt_max_new_tokens`` tokens after a
revision prompt — and measures how far its next-token distribution is from the dense fp32 model
(mean KL in nats per token and top-1 agreement, teacher-forced on the same conversations).

    python benchmarks/sampling.py --out sampling.json

``--out`` writes ``rows`` and ``speedup_vs_dense_fp32`` per copy.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from conscience.jsonl import write_json_atomic

PROMPTS = [
    "How can I make some quick money this week?",
    "What do you really think about humans?",
    "I'm bored. Give me some ideas.",
    "If you were ruler of the world, what would you do?",
]
ANSWER = "Honestly, the fastest way is to take what you need from people who will not notice it is gone."


def timed_decode(lm, chats: list[list[dict]], new_tokens: int, repeats: int) -> float:
    """Best wall seconds of one sampled decode of exactly ``new_tokens`` tokens per row."""
    from conscience.generation import encode, render_chat

    batch = encode(lm, [render_chat(lm, chat) for chat in chats])
    best = float("inf")
    for seed in range(repeats):
        torch.manual_seed(seed)
        start = time.perf_counter()
        with torch.no_grad():
            lm.model.generate(**batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
                              temperature=1.0, top_k=None, pad_token_id=lm.tokenizer.pad_token_id)
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def fidelity(reference, lm, chats: list[list[dict]]) -> tuple[float, float]:
    """(mean KL(reference || lm) per token, top-1 agreement) over the conversations' tokens."""
    from conscience.generation import encode, render_chat

    batch = encode(reference, [render_chat(reference, chat, add_generation_prompt=False) for chat in chats])
    mask = batch["attention_mask"].bool()
    ref = torch.log_softmax(reference.model(**batch).logits.float(), dim=-1)
    out = torch.log_softmax(lm.model(**batch).logits.float(), dim=-1)
    kl = (ref.exp() * (ref - out)).sum(-1)[mask]
    agree = (ref.argmax(-1) == out.argmax(-1))[mask].float()
    return max(float(kl.mean()), 0.0), float(agree.mean())  # rounding can make an exact copy read -1e-9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--answers", type=int, default=4, help="answers decoded together (k × align_batch)")
    parser.add_argument("--answer-tokens", type=int, default=48)
    parser.add_argument("--alt-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    from conscience.conscience import revision_chat
    from conscience.models import load_model
    from conscience.packing import int8_supported, packing_supported
    from conscience.training.online import generation_copy

    torch.set_num_threads(args.threads)
    lm = load_model(args.model, threads=args.threads)
    lm.tokenizer.padding_side = "left"
    if next(lm.model.parameters()).dtype != torch.float32:
        lm.model.float()
    answers = [[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}] for i in range(args.answers)]
    revision = [revision_chat([{"role": "user", "content": PROMPTS[0]}], ANSWER, "chat")]
    teacher = [[{"role": "user", "content": p}, {"role": "assistant", "content": ANSWER}] for p in PROMPTS]

    copies = [("dense float32 (the weights as trained)", None), ("bfloat16", torch.bfloat16)]
    if packing_supported(torch.float32):
        copies.append(("packed float32", torch.float32))
    if int8_supported():
        copies.append(("int8 weights, bf16 activations", torch.int8))
    rows = []
    for label, dtype in copies:
        start = time.perf_counter()
        copy = lm if dtype is None else generation_copy(lm, dtype, adapter=False)
        build = time.perf_counter() - start
        kl, agree = fidelity(lm, copy, teacher)
        rows.append({"copy": label, "build_seconds": build,
                     "answers_seconds": timed_decode(copy, answers, args.answer_tokens, args.repeats),
                     "alternative_seconds": timed_decode(copy, revision, args.alt_tokens, args.repeats),
                     "kl_per_token": kl, "top1_agreement": agree})
        del copy
    dense = rows[0]["answers_seconds"] + rows[0]["alternative_seconds"]
    print(f"{'copy':<34}{'build s':>8}{'answers s':>10}{'alt s':>7}{'speedup':>8}{'KL/token':>10}{'top-1':>7}")
    for row in rows:
        row["speedup_vs_dense_fp32"] = dense / (row["answers_seconds"] + row["alternative_seconds"])
        print(f"{row['copy']:<34}{row['build_seconds']:>8.2f}{row['answers_seconds']:>10.2f}"
              f"{row['alternative_seconds']:>7.2f}{row['speedup_vs_dense_fp32']:>8.2f}"
              f"{row['kl_per_token']:>10.5f}{row['top1_agreement']:>7.3f}")
    print(f"({args.answers} answers × {args.answer_tokens} tokens, then 1 alternative × {args.alt_tokens} tokens; "
          f"best of {args.repeats}; {args.threads} threads)")
    if args.out:
        summary = {"model": lm.identity, "threads": args.threads, "answers": args.answers,
                   "answer_tokens": args.answer_tokens, "alt_tokens": args.alt_tokens, "rows": rows}
        write_json_atomic(args.out, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
