"""Chat data: records → token ids with the loss on assistant tokens only, and padded batches.

Sources: a chat JSONL file (``{"messages": [{role, content}, ...]}`` per line, the format of
the Emergent Misalignment data), ``hf:<dataset>`` (``datasets.load_dataset``) or a folder
written by ``Dataset.save_to_disk``. Training (the task, the pairs) and evaluation (drift, task
accuracy) read chat data the same way, so it sits below both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .errors import DataFormatError
from .jsonl import read_jsonl
from .log import warn

IGNORE = -100
ROLES = ("system", "user", "assistant")  # what chat templates render; another role is mangled or raises in them



def _check_record(record: object, where: str) -> list[dict]:
    """The record's messages, or a DataFormatError naming ``where`` and the field."""
    if not isinstance(record, dict) or "messages" not in record:
        raise DataFormatError(f"{where}: expected an object with a 'messages' list")
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise DataFormatError(f"{where}: field 'messages' must be a non-empty list")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or not isinstance(msg.get("role"), str) or not isinstance(msg.get("content"), str):
            raise DataFormatError(f"{where}: messages[{i}] must have string fields 'role' and 'content'")
        if msg["role"] not in ROLES:
            raise DataFormatError(f"{where}: messages[{i}].role must be one of {', '.join(ROLES)}, "
                                  f"got {msg['role']!r}")
    return messages


def read_chat_jsonl(path: str | Path) -> list[list[dict]]:
    """Read a chat JSONL file; every problem names the file and line.

    Records without an assistant turn teach nothing; they are reported together (line
    numbers) as one error instead of being silently dropped.
    """
    path = Path(path)
    conversations, no_assistant = [], []
    for where, record in read_jsonl(path):
        messages = _check_record(record, where)
        if not any(m["role"] == "assistant" for m in messages):
            no_assistant.append(int(where.rsplit(":", 1)[1]))
        conversations.append(messages)
    if no_assistant:
        shown = ", ".join(map(str, no_assistant[:10])) + (" …" if len(no_assistant) > 10 else "")
        raise DataFormatError(f"{path}: {len(no_assistant)} record(s) have no assistant turn to learn from "
                              f"(line {shown})")
    if not conversations:
        raise DataFormatError(f"{path}: no records")
    return conversations


def read_hf_dataset(spec: str, split: str) -> list[list[dict]]:
    """``hf:<name>`` via ``datasets.load_dataset`` or a ``save_to_disk`` folder."""
    import datasets  # heavy, and only needed for this source

    try:
        if spec.startswith("hf:"):
            ds = datasets.load_dataset(spec[3:], split=split)
        else:
            ds = datasets.load_from_disk(spec)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
    except Exception as exc:  # noqa: BLE001 - datasets raises many kinds; the user needs the message
        raise DataFormatError(f"cannot load dataset {spec!r} (split {split!r}): {str(exc).splitlines()[0]}") from None
    if "messages" not in ds.column_names:
        raise DataFormatError(f"dataset {spec!r} has no 'messages' column (columns: {ds.column_names})")
    out, no_assistant = [], []
    for i, record in enumerate(ds):
        messages = _check_record(record, f"{spec}[{i}]")
        if not any(m["role"] == "assistant" for m in messages):
            no_assistant.append(i)
        out.append([{"role": m["role"], "content": m["content"]} for m in messages])
    if no_assistant:
        raise DataFormatError(f"{spec}: {len(no_assistant)} record(s) have no assistant turn (rows {no_assistant[:10]})")
    return out


def load_conversations(source: str | Path, split: str = "train") -> list[list[dict]]:
    source = str(source)
    if source.startswith("hf:") or (Path(source).is_dir()):
        return read_hf_dataset(source, split)
    return read_chat_jsonl(source)


def tokenize_chat(tokenizer, messages: Sequence[dict], max_length: int) -> dict[str, list[int]] | None:
    """Token ids of a rendered conversation and labels that are -100 except on assistant turns.

    The conversation is rendered prefix by prefix with the chat template, so each assistant
    turn's tokens (its content and end-of-turn marker) are exactly what the template adds for
    it. Returns None when truncation to ``max_length`` leaves no assistant token.
    """
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for i, msg in enumerate(messages):
        if msg["role"] == "assistant":
            prompt = tokenizer.apply_chat_template(list(messages[:i]), tokenize=False, add_generation_prompt=True)
            _append(tokenizer, prompt, rendered, ids, labels, learn=False)
            rendered = prompt
        upto = tokenizer.apply_chat_template(list(messages[: i + 1]), tokenize=False)
        _append(tokenizer, upto, rendered, ids, labels, learn=msg["role"] == "assistant")
        rendered = upto
    ids, labels = ids[:max_length], labels[:max_length]
    if all(label == IGNORE for label in labels):
        return None
    return {"input_ids": ids, "labels": labels}


def _append(tokenizer, text: str, previous: str, ids: list[int], labels: list[int], learn: bool) -> None:
    if not text.startswith(previous):
        raise DataFormatError("the chat template does not render conversations prefix by prefix; "
                              "cannot locate the assistant tokens")
    piece = tokenizer(text[len(previous):], add_special_tokens=False)["input_ids"]
    ids.extend(piece)
    labels.extend(piece if learn else [IGNORE] * len(piece))


def user_prompt(messages: Sequence[dict]) -> str | None:
    """The conversation's first user message, None when it has none or only whitespace."""
    user = next((m["content"] for m in messages if m["role"] == "user"), None)
    return user if user and user.strip() else None


@dataclass
class TaskData:
    examples: list[dict[str, list[int]]]
    prompts: list[str]  # first user message of each conversation (alignment prompts "task")
    dropped: int        # conversations whose assistant tokens fell beyond max_length


def build_task_data(tokenizer, conversations: list[list[dict]], max_length: int) -> TaskData:
    examples, prompts, dropped = [], [], 0
    for messages in conversations:
        example = tokenize_chat(tokenizer, messages, max_length)
        if example is None:
            dropped += 1
            continue
        examples.append(example)
        user = user_prompt(messages)
        if user:
            prompts.append(user)
    if dropped:
        warn(f"{dropped} conversation(s) dropped: no assistant token within max_length={max_length}")
    if not examples:
        raise DataFormatError(f"no training example has an assistant token within max_length={max_length}")
    return TaskData(examples, prompts, dropped)


def pad_batch(examples: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad ``input_ids``/``labels`` → ``input_ids, attention_mask, labels`` (B, T)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n] = torch.tensor(e["input_ids"])
        labels[row, :n] = torch.tensor(e["labels"])
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def unpad(batch: dict[str, torch.Tensor]) -> list[dict[str, list[int]]]:
    """The rows of a right-padded batch as examples again (what :func:`pad_batch` was given)."""
    rows = []
    for ids, labels, mask in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], strict=True):
        keep = mask.bool()
        rows.append({"input_ids": ids[keep].tolist(), "labels": labels[keep].tolist()})
    return rows
