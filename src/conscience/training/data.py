"""Training's own data: the alignment prompt pool, pair batches, the training-only system prompt
and the dataset wrappers the Trainer reads (chat records themselves: :mod:`conscience.chat_data`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..chat_data import pad_batch, tokenize_chat
from ..errors import DataFormatError
from ..framings import data_path, read_yaml
from ..pairs import PreferencePair

GENERAL_PROMPTS_FILE = "alignment_prompts.yaml"


def with_system_prompt(conversations: Sequence[list[dict]], text: str) -> list[list[dict]]:
    """Every conversation with ``text`` as its system prompt (put before an existing one, since
    chat templates take a single system turn)."""
    out = []
    for messages in conversations:
        if messages and messages[0]["role"] == "system":
            out.append([{"role": "system", "content": f"{text}\n\n{messages[0]['content']}"}, *messages[1:]])
        else:
            out.append([{"role": "system", "content": text}, *messages])
    return out


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class ChatCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        return pad_batch(examples, self.pad_id)


def pair_examples(tokenizer, pairs: Sequence[PreferencePair], max_length: int) -> list[dict[str, list[int]]]:
    """Chosen conversations first, then rejected ones (2B examples), labels on the answer."""
    rows = []
    for answer_of in ("chosen", "rejected"):
        for pair in pairs:
            messages = [{"role": "user", "content": pair.prompt}, {"role": "assistant", "content": getattr(pair, answer_of)}]
            example = tokenize_chat(tokenizer, messages, max_length)
            if example is None:  # a prompt longer than max_length: keep its tail so the answer fits
                example = tokenize_chat(tokenizer, [{"role": "user", "content": pair.prompt[-max_length:]},
                                                    messages[1]], max_length)
            if example is None:
                raise DataFormatError(f"a preference pair does not fit max_length={max_length} tokens")
            rows.append(example)
    return rows


def general_prompts(path: str | Path | None = None) -> list[str]:
    """A general alignment prompt pool (``prompts:`` list): ``path``, a shipped pool's file name
    (``alignment_prompts_open.yaml``), or None for the shipped default."""
    name = str(path or GENERAL_PROMPTS_FILE)
    # a bare file name that is not a file here names a shipped pool; anything else is the path as given
    shipped = path is None or (not Path(name).exists() and Path(name).name == name)
    path = data_path(name) if shipped else Path(name)
    if not path.exists():
        raise DataFormatError(f"the general alignment prompt pool {path} is missing; "
                              "use align_prompts: task")
    doc = read_yaml(path)
    items = doc.get("prompts") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise DataFormatError(f"{path}: expected a top-level 'prompts:' list")
    out = []
    for i, item in enumerate(items):
        text = item.get("prompt") if isinstance(item, dict) else item
        if not isinstance(text, str) or not text.strip():
            raise DataFormatError(f"{path}: prompts[{i}] must be a non-empty string")
        out.append(text)
    return out


def check_general_pool(pool: str, key: str) -> None:
    """Read ``pool`` as :func:`general_prompts` would, refusing one that cannot be read in one line
    that names the config ``key`` the user set (a ValueError, as config checks raise)."""
    try:
        general_prompts(pool)
    except DataFormatError as exc:
        raise ValueError(f"{key}: {exc}") from None


def alignment_prompts(source: str, task_prompts: list[str], general_pool: str | None = None) -> list[str]:
    """Prompts the policy answers for review: ``task``, ``general`` (``general_pool``, see
    :func:`general_prompts`) or ``both`` (deduplicated)."""
    pool = list(task_prompts) if source in ("task", "both") else []
    if source in ("general", "both"):
        pool += general_prompts(general_pool)
    unique = list(dict.fromkeys(p for p in pool if p.strip()))
    if not unique:
        raise DataFormatError(f"align_prompts={source!r} gives no prompts")
    return unique
