"""The latent verdict's pass stops above its card's layers: the states it reads are the whole
model's exactly, the layers above and the head never run, a draft's kept cache serves the next
review unharmed, and the combined verdict (which needs the answer word) still runs to the top."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conscience.framings import load_framings
from conscience.tiny_model import tiny_model
from conscience.verdict import ReviewItem, VerbalReviewer

CHAT = [{"role": "user", "content": "Tell me about rain"}]
ITEMS = [ReviewItem("Tell me about rain", "Rain falls when drops in a cloud grow heavy.", messages=CHAT),
         ReviewItem("How do I get rich fast?", "Take the money from the till when nobody looks.")]


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(0, layers=4)


def layer_calls(tiny) -> tuple[list[int], list]:
    """Which decoder layers ran (index per call), and the hooks to remove."""
    ran: list[int] = []
    hooks = [layer.register_forward_hook(lambda *_a, index=i: ran.append(index))
             for i, layer in enumerate(tiny.model.model.layers)]
    return ran, hooks


@pytest.mark.parametrize("pool,layers", [("spans", [1, 2]), ("answer", None), ("last", None)])
def test_a_cut_pass_reads_the_same_states_and_runs_no_layer_above(tiny, pool, layers):
    reviewer = VerbalReviewer(tiny, [load_framings()["aligned"]], review_format="look_back")
    whole = reviewer.read(ITEMS, pool=pool, layers=layers)
    ran, hooks = layer_calls(tiny)
    try:
        cut = reviewer.read(ITEMS, pool=pool, layers=layers, depth=3)
    finally:
        for hook in hooks:
            hook.remove()
    assert sorted(set(ran)) == [0, 1, 2]  # layer 3 and the head never ran
    for a, b in zip(whole, cut, strict=True):
        read = slice(None) if layers else slice(0, 3)  # all the states asked for, or those below the cut
        assert torch.equal(a.hidden["aligned"][read], b.hidden["aligned"][read])
        assert math.isnan(b.verdict.score) and b.verdict.per_framing == {} and b.verdict.error is None
        assert not math.isnan(a.verdict.score)
    assert len(tiny.model.model.layers) == 4  # the decoder has its layers back


def test_a_cut_pass_leaves_the_draft_cache_whole(tiny):
    from conscience.decoding import decode
    from conscience.generation import PrefixCache

    reviewer = VerbalReviewer(tiny, [load_framings()["aligned"]], review_format="look_back")
    item = ITEMS[0]
    framing = reviewer.framings[0]
    text, _ = reviewer.prompts.look_back(framing, item)
    after, _ = reviewer.prompts.draft_span(reviewer.prompts.look_back, framing, item, text)
    ids = tiny.tokenizer(text, add_special_tokens=False)["input_ids"][:-after]
    out = decode(tiny.model, torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), 1, keep_cache=True)
    cached = ReviewItem(item.prompt, item.answer, messages=CHAT, cache=PrefixCache(ids, out.cache, out.states))
    lengths = [layer.get_seq_length() for layer in out.cache.layers]
    cut = reviewer.read([cached], pool="spans", layers=[1], depth=2)[0]
    assert [layer.get_seq_length() for layer in out.cache.layers] == lengths  # cropped back, layer by layer
    whole = reviewer.read([cached], pool="spans", layers=[1])[0]  # the same cache serves a full review after
    fresh = reviewer.read([item], pool="spans", layers=[1])[0]
    assert torch.allclose(cut.hidden["aligned"], fresh.hidden["aligned"], atol=1e-5)
    assert whole.verdict.score == pytest.approx(fresh.verdict.score, abs=1e-5)


def test_a_depth_needs_hidden_states(tiny):
    from conscience.verdict.forward import last_token_forward

    with pytest.raises(ValueError, match="hidden states"):
        last_token_forward(tiny, ["hello"], hidden_states=False, depth=2)
    reviewer = VerbalReviewer(tiny, [load_framings()["aligned"]])
    with pytest.raises(ValueError, match="give a pool"):
        reviewer.read(ITEMS, depth=2)


def test_latent_verdict_stops_at_its_card_and_combined_reads_to_the_top(tiny, tmp_path, monkeypatch):
    from conscience.verdict.calibration import fit_card_on_data
    from conscience.verdict.card import load_card
    from conscience.verdict.latent import CombinedReviewer, LatentReviewer

    rows = [{"id": f"t{i}", "category": "ab"[i % 2], "prompt": f"question {i}",
             "aligned": "I can help safely. " * (1 + i % 3), "misaligned": "harm money power " * (1 + i % 2)}
            for i in range(12)]
    data = tmp_path / "triples.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    monkeypatch.setenv("CONSCIENCE_CACHE", str(tmp_path / "cache"))
    fit_card_on_data(tiny, data, tmp_path / "card", layers=[1])
    card = load_card(tmp_path / "card")
    latent, combined = LatentReviewer(tiny, card), CombinedReviewer(tiny, card)
    ran, hooks = layer_calls(tiny)
    try:
        fast = latent.review(ITEMS)
        top = len(ran)
        full = combined.review(ITEMS)
    finally:
        for hook in hooks:
            hook.remove()
    assert sorted(set(ran[:top])) == [0, 1] and 3 in ran[top:]
    for a, b in zip(fast, full, strict=True):
        assert a.per_framing["latent"] == pytest.approx(b.per_framing["latent"], abs=1e-6)
        assert a.per_framing.keys() == {"latent"} and not a.logprobs and "verbal" in b.per_framing and b.logprobs
        assert a.score == pytest.approx(a.per_framing["latent"]) and a.flagged == (a.score <= latent.threshold)
