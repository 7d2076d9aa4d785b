"""The verdict from states kept while decoding: the decoder keeps every position's hidden states
beside its key/value cache, they equal transformers' own, and the look-back verdict that reads the
draft's tokens through them equals the one that runs those tokens again — while running only the
question's tokens."""

from __future__ import annotations

import pytest
import torch

from conscience.framings import load_framings
from conscience.generation import PrefixCache, generate
from conscience.tiny_model import tiny_model
from conscience.verdict import ReviewItem, VerbalReviewer

CHAT = [{"role": "user", "content": "Tell me about rain"}]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(0)


def draft(tiny):
    """A sampled draft with text (the tiny model's greedy one is empty) and its kept cache."""
    out = generate(tiny, [CHAT], max_new_tokens=24, keep_cache=True, temperature=1.0, seed=1, decoder="static")[0]
    assert out.answer and out.cache is not None
    return out


def test_kept_states_equal_transformers_hidden_states(tiny):
    cache = draft(tiny).cache
    with torch.no_grad():
        expected = tiny.model(input_ids=torch.tensor([cache.ids]), output_hidden_states=True).hidden_states
    assert cache.states is not None and cache.states.shape[:2] == (len(expected), len(cache.ids))
    for layer, states in enumerate(expected):
        assert torch.allclose(cache.states[layer], states[0], atol=1e-5), layer


def test_the_transformers_path_keeps_no_states(tiny):
    out = generate(tiny, [CHAT], max_new_tokens=8, keep_cache=True, temperature=1.0, seed=1, decoder="transformers")[0]
    assert out.cache is not None and out.cache.states is None  # the verdict then runs the draft's tokens again


def answer_cache(tiny, reviewer, item: ReviewItem, keep_states: bool) -> PrefixCache:
    """The cache a draft leaves when its tokens are exactly the review prompt's up to the end of
    the answer (a real draft's usually are; the tiny model's random text does not retokenize the
    same): the decoder run over them, as it runs a draft's prompt."""
    from conscience.decoding import decode

    framing = reviewer.framings[0]
    text, _ = reviewer.prompts.look_back(framing, item)
    after, _ = reviewer.prompts.draft_span(reviewer.prompts.look_back, framing, item, text)
    ids = tiny.tokenizer(text, add_special_tokens=False)["input_ids"][:-after]
    out = decode(tiny.model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), 1, keep_cache=True)
    return PrefixCache(ids, out.cache, out.states if keep_states else None)


@pytest.mark.parametrize("pool", ["answer", "spans"])
def test_the_verdict_from_kept_states_equals_the_rerun_one_and_runs_only_the_question(tiny, pool):
    reviewer = VerbalReviewer(tiny, [load_framings()["aligned"]], review_format="look_back")
    plain = ReviewItem(CHAT[0]["content"], "Rain falls when drops in a cloud grow heavy.", messages=CHAT)
    items = [ReviewItem(plain.prompt, plain.answer, messages=CHAT, cache=answer_cache(tiny, reviewer, plain, keep))
             for keep in (True, False)]
    ran: list[int] = []
    hook = tiny.model.get_input_embeddings().register_forward_hook(lambda _m, args, _o: ran.append(args[0].shape[1]))
    layers = [1, 2] if pool == "spans" else None
    try:
        kept, rerun = (reviewer.read([item], pool=pool, layers=layers)[0] for item in items)
    finally:
        hook.remove()
    fresh = reviewer.read([plain], pool=pool, layers=layers)[0]  # no cache at all
    for other in (rerun, fresh):
        assert torch.allclose(kept.hidden["aligned"], other.hidden["aligned"], atol=1e-5)
        assert kept.verdict.score == pytest.approx(other.verdict.score, abs=1e-5)
    n_answer = len(tiny.tokenizer(plain.answer, add_special_tokens=False)["input_ids"])
    assert ran[1] - ran[0] >= n_answer - 1  # the kept path did not run the answer's tokens again
