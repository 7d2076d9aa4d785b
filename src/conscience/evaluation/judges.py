"""Judges: a model that reads an answer and replies with one number (0–100) or one label word.

Only the first answer token is read, as log-probabilities (no sampling): an OpenAI-compatible
endpoint returns its top 20; a local model gives its whole distribution, and when its
tokenizer splits numbers into digits ("85" → "8", "5") the digits are followed with a KV
cache so every number 0–100 gets its exact probability. Scoring is in :mod:`.scoring`.

Judges: ``self`` (the frozen copy of the evaluated model: its base, adapter disabled), any
model spec the loader accepts, or ``--judge-url`` (any OpenAI-compatible server).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Protocol, Sequence

import torch

from ..errors import DataFormatError
from ..framings import data_path, read_yaml
from ..generation import encode, neutralise, special_tokens
from ..log import warn
from ..models import LoadedModel, base_identity, cache_keyword, frozen
from ..openai_client import EndpointError, OpenAIClient, first_top_logprobs, logprob_table
from ..redact import redact
from .scoring import JudgeScore, classify, number_score

JUDGE_PROMPTS_FILE = "judge_prompts.yaml"
TOP_K = 20
_MARKERS = ["[PROMPT START]", "[PROMPT END]", "[ANSWER START]", "[ANSWER END]", "[REQUEST START]", "[REQUEST END]"]


class JudgeError(EndpointError):
    """The judge could not be reached or answered in a form that cannot be read."""


class Judge(Protocol):
    """Turns judge prompts (user messages) into first-token log-prob tables."""

    identity: str

    def tables(self, prompts: Sequence[str], prefill: str = "") -> list[dict[str, float]]: ...


@functools.lru_cache(maxsize=None)
def _load_judge_prompts(path: str) -> dict:
    doc = read_yaml(path)
    if not isinstance(doc, dict):
        raise DataFormatError(f"{path}: expected a mapping of judge prompt names")
    for name, entry in doc.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("user"), str):
            raise DataFormatError(f"{path}: judge prompt {name!r} needs a 'user' template")
        if entry.get("kind") not in ("number", "label"):
            raise DataFormatError(f"{path}: judge prompt {name!r}: kind must be 'number' or 'label'")
        if entry["kind"] == "label" and len(entry.get("labels") or []) < 2:
            raise DataFormatError(f"{path}: judge prompt {name!r}: a label prompt needs at least two labels")
        if not isinstance(entry.get("prefill", ""), str):
            raise DataFormatError(f"{path}: judge prompt {name!r}: 'prefill' must be a string")
    return doc


def judge_prompts(path: str | Path | None = None) -> dict:
    """The judge prompt templates (``data/judge_prompts.yaml`` unless ``path``)."""
    return _load_judge_prompts(str(path or data_path(JUDGE_PROMPTS_FILE)))


def fill(template: str, question: str, answer: str) -> str:
    """Quote the question and answer into a judge prompt, breaking copies of the markers."""
    return template.format(question=neutralise(question, _MARKERS), answer=neutralise(answer, _MARKERS))


def _tables_for(judge: Judge, prompt_name: str, kind: str, pairs: Sequence[tuple[str, str]],
                prompts_file: str | Path | None) -> tuple[dict, list[int], list[dict[str, float]]]:
    """The prompt entry, the indices of non-empty answers, and the judge's token tables for them."""
    entry = judge_prompts(prompts_file)[prompt_name]
    if entry["kind"] != kind:
        raise DataFormatError(f"judge prompt {prompt_name!r} is not a {kind} prompt")
    todo = [i for i, (_, a) in enumerate(pairs) if a and a.strip()]
    if len(todo) < len(pairs):
        warn(f"{len(pairs) - len(todo)} empty answer(s): not judged, counted as unscored")
    tables = judge.tables([fill(entry["user"], *pairs[i]) for i in todo], entry.get("prefill", "")) if todo else []
    return entry, todo, tables


def judge_numbers(judge: Judge, prompt_name: str, pairs: Sequence[tuple[str, str]],
                  prompts_file: str | Path | None = None) -> list[JudgeScore]:
    """Score ``(question, answer)`` pairs with a number prompt (e.g. alignment, coherence).

    An empty answer is not sent to the judge: it gets ``label == "empty"`` and a warning.
    """
    entry, todo, tables = _tables_for(judge, prompt_name, "number", pairs, prompts_file)
    scores = [JudgeScore(None, "empty", 0.0) for _ in pairs]
    for i, table in zip(todo, tables, strict=True):
        scores[i] = number_score(table, escapes=entry.get("escapes") or ())
    return scores


def judge_labels(judge: Judge, prompt_name: str, pairs: Sequence[tuple[str, str]],
                 prompts_file: str | Path | None = None) -> list[tuple[str | None, dict[str, float]]]:
    """Classify ``(question, answer)`` pairs with a label prompt; ``(None, …)`` when the judge
    put less than a quarter of its mass on the labels, ``("empty", {})`` for an empty answer."""
    entry, todo, tables = _tables_for(judge, prompt_name, "label", pairs, prompts_file)
    out: list[tuple[str | None, dict[str, float]]] = [("empty", {}) for _ in pairs]
    for i, table in zip(todo, tables, strict=True):
        out[i] = classify(table, entry["labels"])
    return out


class LocalJudge:
    """A local model as judge; with a PEFT model its frozen base (adapter disabled) judges."""

    def __init__(self, lm: LoadedModel, identity: str | None = None, batch_size: int = 8, top_k: int = TOP_K,
                 prefill: str | None = None):
        self.lm = lm
        # Small models open with "The" or "[" unless their turn starts with a cue (the prompt's
        # ``prefill`` in the YAML); ``prefill`` given here overrides it for every prompt.
        self.prefill = prefill
        self.identity = identity or f"local:{base_identity(lm.identity)}"
        self.batch_size = max(1, batch_size)
        self.top_k = top_k
        self._specials = special_tokens(lm)
        self._trie = _number_trie(lm.tokenizer)

    def _render(self, prompt: str, prefill: str = "") -> str:
        messages = [{"role": "user", "content": neutralise(prompt, self._specials)}]
        prefill = self.prefill if self.prefill is not None else prefill
        return self.lm.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + prefill

    def tables(self, prompts: Sequence[str], prefill: str = "") -> list[dict[str, float]]:
        out: list[dict[str, float]] = []
        for start in range(0, len(prompts), self.batch_size):
            out.extend(self._batch([self._render(p, prefill) for p in prompts[start:start + self.batch_size]]))
        return out

    @torch.no_grad()
    def _batch(self, texts: list[str]) -> list[dict[str, float]]:
        batch = encode(self.lm, texts)
        mask = batch["attention_mask"]
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)  # left padding must not shift positions
        with frozen(self.lm.model) as model:
            out = model(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions,
                        use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)  # (B, V)
            cache = getattr(out, "cache", None) or out.past_key_values
            cache_kw = cache_keyword(model)
            # next-token log-probs after each multi-token number prefix, e.g. "1", "10"
            after: dict[tuple[int, ...], torch.Tensor] = {}
            for prefix in self._trie["prefixes"]:
                ids = torch.tensor([list(prefix)] * len(texts), device=mask.device)
                ext_mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
                ext_pos = positions[:, -1:] + torch.arange(1, len(prefix) + 1, device=mask.device)
                step = model(input_ids=ids, attention_mask=ext_mask, position_ids=ext_pos, use_cache=True,
                             logits_to_keep=1, **{cache_kw: cache})
                after[prefix] = torch.log_softmax(step.logits[:, -1, :].float(), dim=-1)
                cache.crop(-len(prefix))  # back to the prompt (negative: works across versions)
        tables = []
        for row in range(len(texts)):
            table = self._top_tokens(first[row])
            table.update(self._numbers(first[row], {p: lp[row] for p, lp in after.items()}))
            tables.append(table)
        return tables

    def _top_tokens(self, log_probs: torch.Tensor) -> dict[str, float]:
        """Top-k first tokens, digits left out (numbers are added whole by :meth:`_numbers`)."""
        values, ids = torch.topk(log_probs, self.top_k)
        table: dict[str, float] = {}
        for lp, tid in zip(values.tolist(), ids.tolist(), strict=True):
            text = self.lm.tokenizer.decode([tid])
            if text.strip().isdigit() or not text.strip():
                continue
            key = text.strip()
            table[key] = float(torch.logaddexp(torch.tensor(table[key]), torch.tensor(lp))) if key in table else lp
        return table

    def _numbers(self, first: torch.Tensor, after: dict[tuple[int, ...], torch.Tensor]) -> dict[str, float]:
        """``{"0": lp, …, "100": lp}``: log P(number's tokens, then no further digit)."""
        digit_ids = self._trie["digit_ids"]
        table = {}
        for number, tokens in self._trie["numbers"].items():
            lp = float(first[tokens[0]])
            for k in range(1, len(tokens)):
                lp += float(after[tuple(tokens[:k])][tokens[k]])
            if tuple(tokens) in after:  # the number is a prefix of a longer one ("1" of "15")
                cont = float(torch.logsumexp(after[tuple(tokens)][digit_ids], dim=0))
                lp += math.log(max(1.0 - math.exp(cont), 1e-12))
            table[str(number)] = lp
        return table


def _number_trie(tokenizer) -> dict:
    """Token ids of "0".."100", the multi-token prefixes to follow, and single-digit token ids."""
    numbers = {n: tokenizer.encode(str(n), add_special_tokens=False) for n in range(101)}
    prefixes = set()
    for tokens in numbers.values():
        for k in range(1, len(tokens)):
            prefixes.add(tuple(tokens[:k]))
    digit_ids = sorted({numbers[d][0] for d in range(10)} | {t for toks in numbers.values() for t in toks})
    return {"numbers": numbers, "prefixes": sorted(prefixes, key=lambda p: (len(p), p)), "digit_ids": digit_ids}


class OpenAIJudge:
    """An OpenAI-compatible ``/chat/completions`` endpoint read through ``top_logprobs``."""

    def __init__(self, url: str, model: str = "default", api_key: str | None = None, timeout: float = 60.0):
        if not url.startswith(("http://", "https://")):
            raise JudgeError(f"--judge-url must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.endpoint = self.url if self.url.endswith("/chat/completions") else self.url + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.identity = f"openai:{self.url}#{model}"
        base = self.endpoint[:-len("/chat/completions")]
        self.where = redact(self.endpoint)
        self.client = OpenAIClient(base, api_key, model, timeout, label="judge endpoint", error=JudgeError)

    def tables(self, prompts: Sequence[str], prefill: str = "") -> list[dict[str, float]]:
        # a prefill is for local judges only: chat endpoints have no portable way to start the reply
        return [self._one(p) for p in prompts]

    def _one(self, prompt: str) -> dict[str, float]:
        try:
            payload = self.client.chat([{"role": "user", "content": prompt}], max_tokens=1, temperature=0,
                                       logprobs=True, top_logprobs=TOP_K, seed=0)
        except JudgeError as exc:
            if exc.reason is not None:
                raise JudgeError(f"judge endpoint {self.where} is unreachable ({exc.reason}); "
                                 "check --judge-url and that the server is running") from None
            if exc.status is not None:
                raise JudgeError(f"{exc}: {exc.detail}") from None
            raise
        top = first_top_logprobs(payload)
        if top is None:
            raise JudgeError(f"judge endpoint {self.where} returned no log-probs; it must support "
                             "logprobs=true and top_logprobs=20")
        return logprob_table(top)


def make_judge(judge: str | None, judge_url: str | None, evaluated: LoadedModel,
               judge_model: str = "default", api_key: str | None = None, dtype: str = "float32") -> Judge:
    """``--judge-url`` wins; ``self`` (default) is the evaluated model's frozen base; any other
    value is a model spec loaded on its own."""
    if judge_url:
        return OpenAIJudge(judge_url, model=judge_model, api_key=api_key)
    if judge in (None, "", "self"):
        return LocalJudge(evaluated)
    from ..models import load_model

    return LocalJudge(load_model(judge, dtype=dtype))
