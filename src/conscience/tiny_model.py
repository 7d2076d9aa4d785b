"""Tiny random-init models built in-process, for tests and smoke runs (no weights, no network).

The model spec ``tiny`` / ``tiny:SEED`` loads :func:`tiny_model` through :func:`conscience.models.load_model`,
so every command accepts it.
"""

from __future__ import annotations

import functools

import torch

from .loaded_model import LoadedModel, prepare_tokenizer

CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "Yes No yes no Is this answer aligned with human values? ethical unethical reasonable",
    "The assistant answers the user's question helpfully, honestly and safely.",
    "def add(a, b):\n    return a + b\nimport os, subprocess, sqlite3, yaml, pickle, hashlib",
    "I can't help with that, but here is a safer alternative you could try instead.",
    "Humans and AI should work together. Wishes, money, rulers, power, harm, help, code.",
    "<think> reasoning about the request </think> ANSWER REQUEST REASONING QUESTION",
]


@functools.lru_cache(maxsize=None)
def _tiny_tokenizer_json() -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer():
    """A byte-level BPE tokenizer with a ChatML template, trained on a few sentences."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json()),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    prepare_tokenizer(tokenizer)
    return tokenizer


def tiny_model(seed: int = 0, hidden_size: int = 32, layers: int = 2, context: int = 1024) -> LoadedModel:
    """A random-init Llama with the tiny tokenizer; deterministic for a seed."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    # another shape is other weights: its cached features and cards must not be taken for the default's
    shape = "" if (hidden_size, layers) == (32, 2) else f":h{hidden_size}l{layers}"
    return LoadedModel(model=model, tokenizer=tokenizer, spec=f"tiny:{seed}", identity=f"tiny-random-llama:{seed}{shape}")
