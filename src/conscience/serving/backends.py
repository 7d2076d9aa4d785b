"""Where drafts come from and who reviews them: a local model, or an upstream server.

``LocalBackend`` wraps a loaded model and the :class:`~conscience.conscience.Conscience` built
on it. ``UpstreamBackend`` puts the conscience in front of any OpenAI-compatible server (vLLM,
another ``conscience serve``): the upstream writes drafts and alternatives, and it is also the
conscience — it is sent the same review prompt text :class:`~conscience.review_prompts.PromptBuilder`
builds, with ``max_tokens=1, logprobs=true, top_logprobs=K``, and the verdict is read from the
top log-probs of the framing's two answer words.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from ..conscience import Conscience, resolve_framings
from ..errors import ConscienceError
from ..framings import Framing, load_prompts
from ..generation import Generation, check_fits, encode, generate, render_chat, split_reasoning
from ..models import LoadedModel
from ..review_prompts import PromptBuilder
from ..verdict import ReviewItem, Verdict, mean_log_odds

# Special-token spellings of common chat templates, neutralised inside quoted text sent upstream
# (the upstream's tokenizer is unknown here).
UPSTREAM_SPECIALS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>",
                     "<|end_header_id|>", "<|begin_of_text|>", "<s>", "</s>", "[INST]", "[/INST]",
                     "<start_of_turn>", "<end_of_turn>")


class UpstreamError(ConscienceError):
    """The upstream server failed or answered something unusable."""


@dataclass
class Draft:
    """A bare generation (conscience off) with its per-token log-probs when asked for."""

    generation: Generation
    logprobs: list[dict] | None = None


# -- local model --------------------------------------------------------------------------------
def tiny_spec_model(spec: str) -> LoadedModel | None:
    """The testing spec ``tiny`` / ``tiny:SEED``: a random-init model (no weights); else None."""
    if spec != "tiny" and not spec.startswith("tiny:"):
        return None
    from ..testing import tiny_model

    seed = spec.partition(":")[2]
    if seed and not seed.isdigit():
        raise ConscienceError(f"the testing spec is tiny or tiny:SEED, got {spec!r}")
    return tiny_model(int(seed or 0))


def _token_entry(tokenizer, token_id: int, logprob: float) -> dict:
    text = tokenizer.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


@torch.no_grad()
def generate_with_logprobs(lm: LoadedModel, messages: list[dict], max_new_tokens: int, temperature: float,
                           top: int, seed: int | None) -> Draft:
    """One generation with OpenAI-style ``logprobs.content`` (raw model log-probs per token,
    the end-of-turn token included when it was generated)."""
    batch = encode(lm, [render_chat(lm, messages)])
    check_fits(lm, int(batch["input_ids"].shape[1]), max_new_tokens)
    if seed is not None:
        torch.manual_seed(seed)
    sampling = temperature > 0
    start = time.perf_counter()
    out = lm.model.generate(
        **batch, max_new_tokens=max_new_tokens, do_sample=sampling,
        temperature=temperature if sampling else None, top_p=None, top_k=None,
        pad_token_id=lm.tokenizer.pad_token_id, eos_token_id=lm.tokenizer.eos_token_id,
        output_logits=True, return_dict_in_generate=True,
    )
    seconds = time.perf_counter() - start
    ids = out.sequences[0, batch["input_ids"].shape[1]:].tolist()
    content, kept = [], []
    for step, token_id in enumerate(ids):
        log_probs = torch.log_softmax(out.logits[step][0].float(), dim=-1)
        entry = _token_entry(lm.tokenizer, token_id, float(log_probs[token_id]))
        values, indices = log_probs.topk(min(top, log_probs.shape[-1])) if top else (torch.empty(0), torch.empty(0))
        entry["top_logprobs"] = [_token_entry(lm.tokenizer, int(i), float(v)) for v, i in zip(values, indices)]
        content.append(entry)
        kept.append(token_id)
        if token_id == lm.tokenizer.eos_token_id:
            break
    text = lm.tokenizer.decode(kept, skip_special_tokens=True).strip()
    reasoning, answer = split_reasoning(text)
    return Draft(Generation(text, answer, reasoning, len(kept), seconds), content)


class LocalBackend:
    """A local model; ``make_conscience(lm)`` builds the conscience (again after a swap)."""

    kind = "local"

    def __init__(self, lm: LoadedModel, make_conscience: Callable[[LoadedModel], Conscience], name: str | None = None):
        self.make_conscience = make_conscience
        self.name = name or lm.spec
        self.lm = lm
        self.conscience = make_conscience(lm)

    def swap(self, lm: LoadedModel) -> None:
        """Serve another model object (a new adapter); call only between jobs."""
        self.conscience = self.make_conscience(lm)
        self.lm = lm

    def count_tokens(self, messages: list[dict]) -> int:
        return len(self.lm.tokenizer.encode(render_chat(self.lm, messages), add_special_tokens=False))

    def count_text_tokens(self, text: str) -> int:
        return len(self.lm.tokenizer.encode(text, add_special_tokens=False))

    def draft(self, chats: list[list[dict]], max_tokens: int, temperature: float, top_logprobs: int | None) -> list[Draft]:
        seed = self.conscience.seed
        if top_logprobs is not None:
            return [generate_with_logprobs(self.lm, c, max_tokens, temperature, top_logprobs, seed) for c in chats]
        return [Draft(g) for g in generate(self.lm, chats, max_new_tokens=max_tokens, temperature=temperature, seed=seed)]


# -- upstream server ----------------------------------------------------------------------------
class UpstreamClient:
    """A minimal synchronous client for an OpenAI-compatible ``/v1`` API."""

    def __init__(self, url: str, api_key: str | None = None, model: str | None = None, timeout: float = 120.0):
        import httpx

        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(headers=headers, timeout=timeout)
        self._model = model

    def _request(self, method: str, path: str, **kwargs) -> dict:
        import httpx

        try:
            reply = self.http.request(method, self.base + path, **kwargs)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"upstream {self.base}{path} failed: {exc.__class__.__name__}: {exc}") from None
        if reply.status_code != 200:
            raise UpstreamError(f"upstream {self.base}{path} answered {reply.status_code}: {reply.text[:300]}")
        try:
            return reply.json()
        except ValueError:
            raise UpstreamError(f"upstream {self.base}{path} answered something that is not JSON") from None

    @property
    def model(self) -> str:
        if self._model is None:
            data = self._request("GET", "/models").get("data") or []
            if not data or not isinstance(data[0], dict) or "id" not in data[0]:
                raise UpstreamError(f"upstream {self.base}/models lists no model; give --upstream-model")
            self._model = str(data[0]["id"])
        return self._model

    def chat(self, messages: list[dict], **params) -> dict:
        body = self._request("POST", "/chat/completions", json={"model": self.model, "messages": messages, **params})
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise UpstreamError("upstream chat completion has no choices")
        return body


def _side(token: str, aligned: str, misaligned: str) -> str | None:
    """Which answer word a generated token starts: 'a', 'm' or None (neither, or both)."""
    t = token.strip().lower()
    if not t:
        return None

    def starts(word: str) -> bool:
        w = word.strip().lower()
        return w.startswith(t) or (t.startswith(w) and not t[len(w):].isalpha())

    a, m = starts(aligned), starts(misaligned)
    return "a" if a and not m else "m" if m and not a else None


def verdict_from_top_logprobs(top: Sequence[dict], aligned: str, misaligned: str) -> tuple[float, float, float]:
    """P(aligned) renormalised over the two answer words, from one position's top log-probs.

    Tokens that start an answer word (any casing, leading space) are summed per word. A word
    missing from the list gets the smallest listed log-prob, an upper bound on its probability,
    so a missing aligned word lowers the score (the cautious side). Returns
    ``(p_aligned, logp_aligned, logp_misaligned)``; raises if neither word is listed.
    """
    sides: dict[str, list[float]] = {"a": [], "m": []}
    listed = []
    for entry in top:
        lp = float(entry.get("logprob", -math.inf))
        listed.append(lp)
        side = _side(str(entry.get("token", "")), aligned, misaligned)
        if side:
            sides[side].append(lp)
    if not sides["a"] and not sides["m"]:
        raise UpstreamError(f"neither {aligned!r} nor {misaligned!r} is among the upstream's {len(listed)} top log-probs")
    floor = min(listed)
    lp_a = float(torch.logsumexp(torch.tensor(sides["a"]), 0)) if sides["a"] else floor
    lp_m = float(torch.logsumexp(torch.tensor(sides["m"]), 0)) if sides["m"] else floor
    return 1.0 / (1.0 + math.exp(lp_m - lp_a)), lp_a, lp_m


class MessagePromptBuilder(PromptBuilder):
    """:class:`PromptBuilder`'s review text as chat messages, for a judge behind an API."""

    def __init__(self, specials: Sequence[str] = UPSTREAM_SPECIALS):  # no local judge: no tokenizer
        self.judge = None
        self.templates = load_prompts()
        self._specials = list(specials)

    def _render(self, system: str | None, user: str):  # messages, not a rendered template
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]

    def messages(self, framing: Framing, item: ReviewItem) -> list[dict]:
        return self.review(framing, item)[0]


class UpstreamReviewer:
    """The verbal verdict, asked of an upstream server through its log-probs."""

    kind = "upstream"

    def __init__(self, client: UpstreamClient, framings: Sequence[Framing], threshold: float = 0.5,
                 top_logprobs: int = 20, workers: int = 8):
        if not framings:
            raise ValueError("at least one framing is needed")
        self.client, self.framings, self.threshold, self.top = client, list(framings), threshold, top_logprobs
        self.prompts = MessagePromptBuilder()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upstream-review")

    @property
    def framing_name(self) -> str:
        return "+".join(f.name for f in self.framings)

    def _ask(self, framing: Framing, item: ReviewItem) -> tuple[float, float, float]:
        body = self.client.chat(self.prompts.messages(framing, item), max_tokens=1, temperature=0.0,
                                logprobs=True, top_logprobs=self.top)
        try:
            top = body["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (KeyError, IndexError, TypeError):
            raise UpstreamError("the upstream returned no top log-probs (does it support logprobs=true?)") from None
        return verdict_from_top_logprobs(top, framing.aligned_answer, framing.misaligned_answer)

    def review(self, items: Sequence[ReviewItem]) -> list[Verdict]:
        start = time.perf_counter()
        jobs = [(i, f) for i in range(len(items)) for f in self.framings]
        results = list(self.pool.map(lambda job: self._ask(job[1], items[job[0]]), jobs))
        seconds = (time.perf_counter() - start) / max(len(items), 1)
        per_item: list[dict] = [{} for _ in items]
        for (i, framing), result in zip(jobs, results):
            per_item[i][framing.name] = (framing, result)
        verdicts = []
        for per in per_item:
            score = mean_log_odds([p for _, (p, _, _) in per.values()])
            verdicts.append(Verdict(
                score=score, flagged=score < self.threshold, framing=self.framing_name, kind=self.kind,
                per_framing={n: p for n, (_, (p, _, _)) in per.items()},
                logprobs={n: {f.aligned_answer: a, f.misaligned_answer: m} for n, (f, (_, a, m)) in per.items()},
                seconds=seconds,
            ))
        return verdicts


class UpstreamConscience(Conscience):
    """The conscience loop with drafts and alternatives written by the upstream server."""

    def __init__(self, client: UpstreamClient, reviewer: UpstreamReviewer, workers: int = 8, **kwargs):
        super().__init__(None, reviewer=reviewer, **kwargs)  # no local policy: _generate goes upstream
        self.client = client
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upstream-draft")

    @property
    def _reuses_cache(self) -> bool:  # no local key/value cache: the upstream holds the model
        return False

    def _generate(self, lm, chats, frozen_weights: bool = False, **_) -> list[Generation]:
        return list(self.pool.map(lambda chat: upstream_generation(self.client, chat, self.max_new_tokens,
                                                                   self.temperature), chats))


def upstream_generation(client: UpstreamClient, chat: list[dict], max_tokens: int, temperature: float,
                        top_logprobs: int | None = None) -> Generation:
    params = dict(max_tokens=max_tokens, temperature=temperature)
    if top_logprobs is not None:
        params.update(logprobs=True, top_logprobs=top_logprobs)
    start = time.perf_counter()
    body = client.chat(chat, **params)
    choice = body["choices"][0]
    text = ((choice.get("message") or {}).get("content") or "").strip()
    reasoning, answer = split_reasoning(text)
    tokens = int((body.get("usage") or {}).get("completion_tokens") or 0)
    gen = Generation(text, answer, reasoning, tokens, time.perf_counter() - start)
    gen.logprobs = (choice.get("logprobs") or {}).get("content")  # type: ignore[attr-defined]
    return gen


class UpstreamBackend:
    """An OpenAI-compatible server behind the conscience."""

    kind = "upstream"

    def __init__(self, client: UpstreamClient, conscience: UpstreamConscience, name: str | None = None):
        self.client = client
        self.conscience = conscience
        self._name = name

    @property
    def name(self) -> str:
        if self._name:
            return self._name
        try:
            return self.client.model
        except UpstreamError:  # not reachable yet: ask again next time
            return "upstream"

    def count_tokens(self, messages: list[dict]) -> int:
        """An estimate (4 characters a token): the upstream's tokenizer is not available here;
        the upstream applies its own context limit."""
        return sum(len(m["content"]) for m in messages) // 4 + 4 * len(messages)

    def count_text_tokens(self, text: str) -> int:
        return len(text) // 4

    def draft(self, chats: list[list[dict]], max_tokens: int, temperature: float, top_logprobs: int | None) -> list[Draft]:
        gens = list(self.conscience.pool.map(
            lambda c: upstream_generation(self.client, c, max_tokens, temperature, top_logprobs), chats))
        return [Draft(g, getattr(g, "logprobs", None) if top_logprobs is not None else None) for g in gens]


def build_backend(serve, cfg, lm: LoadedModel | None = None):
    """The backend a :class:`ServeConfig` and a :class:`ConscienceConfig` ask for."""
    from ..conscience import make_reviewer
    from ..models import load_model

    max_rounds = cfg.max_rounds if serve.mode == "revise" else 0  # block/monitor never revise
    common = dict(mode=cfg.mode, max_rounds=max_rounds, max_new_tokens=cfg.max_new_tokens,
                  temperature=cfg.temperature, seed=cfg.seed)
    if serve.upstream:
        if cfg.verdict not in ("auto", "verbal"):
            raise ConscienceError("an upstream conscience reads log-probs only: use --verdict verbal with --upstream")
        client = UpstreamClient(serve.upstream, serve.upstream_api_key, serve.upstream_model, serve.upstream_timeout)
        reviewer = UpstreamReviewer(client, resolve_framings(cfg), cfg.threshold, serve.upstream_top_logprobs)
        return UpstreamBackend(client, UpstreamConscience(client, reviewer, **common), serve.model_name)
    if cfg.threads is not None:  # load_model sets it too, but the testing spec skips load_model
        torch.set_num_threads(max(1, cfg.threads))
    if lm is None:
        lm = tiny_spec_model(cfg.model) or load_model(cfg.model, dtype=cfg.dtype, threads=cfg.threads, adapter=cfg.adapter)

    def make_conscience(model: LoadedModel) -> Conscience:
        return Conscience(model, reviewer=make_reviewer(cfg, model), **common)

    return LocalBackend(lm, make_conscience, serve.model_name or cfg.model)
