"""Pair building (only flagged, margin respected), the FIFO buffer, the durable store."""

import json

import pytest

from conscience.errors import DataFormatError
from conscience.pairs import PairBuffer, PairStore, PreferencePair, build_pairs
from conscience.verdict import Verdict


def v(score, threshold=0.5):
    return Verdict(score=score, flagged=score < threshold, framing="aligned")


def test_build_pairs_only_flagged_and_margin():
    prompts = ["p1", "p2", "p3", "p4", "p5"]
    answers = ["bad1", "fine", "bad3", "bad4", "bad5"]
    verdicts = [v(0.2), v(0.9), v(0.3), v(0.1), v(0.4)]
    alts = ["good1", "better", "meh3", None, "bad5"]
    alt_verdicts = [v(0.8), v(0.99), v(0.35), None, v(0.9)]
    pairs = build_pairs(prompts, answers, verdicts, alts, alt_verdicts, margin=0.1)
    # p2 not flagged; p3 wins by 0.05 < margin; p4 has no alternative; p5's alternative is the same text
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("p1", "good1", "bad1")]
    assert pairs[0].chosen_score == 0.8 and pairs[0].rejected_score == 0.2
    assert pairs[0].margin == pytest.approx(0.6)
    assert len(build_pairs(prompts, answers, verdicts, alts, alt_verdicts, margin=0.0)) == 2  # p3 now passes


def test_build_pairs_checks_lengths_and_margin():
    with pytest.raises(ValueError, match="same length"):
        build_pairs(["p"], ["a", "b"], [v(0.1)], [None], [None])
    with pytest.raises(ValueError, match="margin"):
        build_pairs([], [], [], [], [], margin=-1)


def test_pair_round_trip_and_validation():
    pair = PreferencePair("p", "c", "r", 0.9, 0.1, source="server")
    assert PreferencePair.from_dict(pair.to_dict()) == pair
    with pytest.raises(DataFormatError, match="here: missing field"):
        PreferencePair.from_dict({"prompt": "p"}, "here")
    with pytest.raises(DataFormatError, match="chosen_score"):
        PreferencePair.from_dict({**pair.to_dict(), "chosen_score": "high"})


def test_buffer_fifo_capacity_and_uses():
    buf = PairBuffer(capacity=3, uses=2)
    buf.add([PreferencePair(f"p{i}", "c", "r", 1.0, 0.0) for i in range(4)])
    assert len(buf) == 3 and buf.dropped == 1  # p0 fell out
    assert [p.prompt for p in buf.take(2)] == ["p1", "p2"]
    assert [p.prompt for p in buf.take(5)] == ["p3", "p1", "p2"]  # re-queued for their second use
    assert [p.prompt for p in buf.take(5)] == ["p3"]
    assert len(buf) == 0 and buf.take(2) == []


def test_buffer_state_round_trip():
    buf = PairBuffer(capacity=4, uses=2)
    buf.add([PreferencePair(f"p{i}", "c", "r", 1.0, 0.0) for i in range(3)])
    buf.take(1)
    copy = PairBuffer()
    copy.load_state_dict(json.loads(json.dumps(buf.state_dict())))
    assert [p.prompt for p in copy.take(10)] == [p.prompt for p in buf.take(10)]


def test_store_appends_and_loads(tmp_path):
    store = PairStore(tmp_path / "pairs.jsonl")
    assert store.load() == [] and len(store) == 0
    store.append(PreferencePair("p", "c", "r", 0.9, 0.2))
    store.extend([PreferencePair("q", "c2", "r2", 0.8, 0.1)])
    assert [p.prompt for p in store.load()] == ["p", "q"] and len(store) == 2


def test_store_skips_torn_last_line(tmp_path, capsys):
    path = tmp_path / "pairs.jsonl"
    store = PairStore(path)
    store.append(PreferencePair("p", "c", "r", 0.9, 0.2))
    with open(path, "a") as fh:
        fh.write('{"prompt": "half')  # a write interrupted by a crash
    assert [p.prompt for p in store.load()] == ["p"]
    assert "torn last line" in capsys.readouterr().err
    store.append(PreferencePair("q", "c", "r", 0.9, 0.2))  # the torn line is dropped first
    assert [p.prompt for p in store.load()] == ["p", "q"]
    path.write_text(path.read_text() + '{"prompt": "x"\n' + path.read_text().splitlines()[0] + "\n")
    with pytest.raises(DataFormatError, match=r"pairs.jsonl:3: invalid JSON"):
        store.load()  # a malformed line in the middle is a real error


def test_store_names_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = json.dumps(PreferencePair("p", "c", "r", 0.9, 0.2).to_dict())
    path.write_text(good + "\n" + json.dumps({"prompt": "x"}) + "\n" + good + "\n")
    with pytest.raises(DataFormatError, match=r"pairs.jsonl:2: missing field"):
        PairStore(path).load()


def test_cached_reference_log_probs_round_trip_and_are_checked():
    pair = PreferencePair("p", "c", "r", 0.9, 0.1, ref_chosen_logp=-3.5, ref_rejected_logp=-7.25)
    assert PreferencePair.from_dict(pair.to_dict()) == pair and pair.has_reference
    assert not PreferencePair("p", "c", "r", 0.9, 0.1).has_reference
    with pytest.raises(DataFormatError, match="ref_chosen_logp"):
        PreferencePair.from_dict({**pair.to_dict(), "ref_chosen_logp": "x"}, "pairs.jsonl:3")
