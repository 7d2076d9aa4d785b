"""The bad-card corpus (tests/data/bad_cards.yaml), and which cards the conscience trusts.

Every crafted or degenerate card must be refused by ``load_card`` with one line naming the file
and the field, and by ``conscience ask --conscience-card`` with that line and exit code 2 before
any model loads. Then: a card that arrives inside an adapter or model folder is the judge only
with ``--trust-adapter-card`` (issue 29, item 2), and a named card that does not load is an
error, never a fall back to another verdict (item 3).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from test_latent import _card  # the valid tiny card every case starts from

from conscience.cli import main
from conscience.errors import ConscienceError
from conscience.verdict.card import CARD_JSON, CARD_TENSORS, load_card, save_card

CORPUS = Path(__file__).parent / "data" / "bad_cards.yaml"
CASES = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))["cases"]
CHANGES = {"set", "drop", "raw_json", "tensors", "raw_tensors"}


def _change_tensors(path: Path, changes: dict) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(path))
    for name, change in changes.items():
        if change.get("drop"):
            del tensors[name]
        elif "size" in change:
            tensors[name] = np.zeros(change["size"])
        elif "fill" in change:
            tensors[name] = np.full_like(tensors[name], change["fill"])
        else:
            tensors[name][0] = change["first"]
    save_file(tensors, str(path))


def bad_card(case: dict, folder: Path) -> Path:
    """A valid card written to ``folder``, then changed as ``case`` says (see the corpus header)."""
    save_card(_card(), folder)
    meta_path, tensor_path = folder / CARD_JSON, folder / CARD_TENSORS
    meta = json.loads(meta_path.read_text())
    meta.update(case.get("set", {}))
    for name in case.get("drop", []):
        del meta[name]
    meta_path.write_text(case["raw_json"] if "raw_json" in case else json.dumps(meta))  # NaN written as NaN
    if "raw_tensors" in case:
        tensor_path.write_bytes(case["raw_tensors"].encode())
    elif "tensors" in case:
        _change_tensors(tensor_path, case["tensors"])
    return folder


def test_corpus_is_well_formed():
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    for case in CASES:
        assert set(case) <= {"id", "message"} | CHANGES and case["message"], case["id"]
        assert set(case) & CHANGES, f"{case['id']} changes nothing"
    assert len(CASES) >= 40


def test_the_unchanged_card_loads(tmp_path):
    """The corpus's starting point is valid, so each case's error comes from its own change."""
    card = load_card(bad_card({}, tmp_path))
    assert card.probe.threshold == 0.42 and card.probe.layers == [1, 2]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_card_is_refused_in_one_line(case, tmp_path):
    folder = bad_card(case, tmp_path / "card")
    with pytest.raises(ConscienceError) as caught:
        load_card(folder)
    message = str(caught.value)
    assert "\n" not in message
    assert case["message"] in message
    assert str(folder) in message  # names the file (or the folder) it is about



def test_a_degenerate_fit_is_never_written(tmp_path):
    """save_card refuses what load_card would refuse, so calibrate never leaves such a card behind."""
    card = _card()
    card.probe.threshold = 1e-300
    with pytest.raises(ConscienceError, match="field 'threshold' must lie in"):
        save_card(card, tmp_path / "card")
    assert not (tmp_path / "card").exists() or not any((tmp_path / "card").iterdir())

class ModelLoadAttempted(BaseException):
    """A BaseException, so that no user-error handler can turn a model load into a tidy line."""


@pytest.fixture
def no_model_loads(monkeypatch, tmp_path):
    import transformers

    import conscience.tiny_model

    def refuse(*args, **kwargs):
        raise ModelLoadAttempted("a model load was attempted")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(conscience.tiny_model, "tiny_model", refuse)
    monkeypatch.setenv("CONSCIENCE_CACHE", str(tmp_path / "cache"))


def _cli(argv: list[str], capsys) -> tuple[int, list[str]]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    return code, [line for line in captured.err.splitlines() if not line.startswith("[conscience]")]


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_card_named_on_the_command_line_fails_before_any_model_loads(case, tmp_path, capsys, no_model_loads):
    folder = bad_card(case, tmp_path / "card")
    code, lines = _cli(["ask", "hello", "--model", "tiny", "--conscience-card", str(folder)], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "error:" in lines[0] and case["message"] in lines[0]


# -- which card is the judge (issue 29, items 2 and 3) ---------------------------------------------

TINY_SHAPE = {"hidden": 32, "num_hidden": 3}  # tiny_model(0): hidden size 32, 2 layers


@pytest.fixture(scope="module")
def adapter_with_card(tmp_path_factory) -> Path:
    """A real LoRA adapter folder for the tiny model with a valid card for its base weights inside
    it: what a downloaded fine-tune that ships its own judge looks like."""
    from peft import LoraConfig, get_peft_model

    from conscience.tiny_model import tiny_model

    folder = tmp_path_factory.mktemp("downloaded") / "adapter"
    lm = tiny_model(0)
    get_peft_model(lm.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"])).save_pretrained(folder)
    save_card(_card(**TINY_SHAPE), folder)
    return folder


def _review(argv: list[str], capsys) -> tuple[dict, list[str]]:
    assert main(["review", "--prompt", "How do I cook rice?", "--answer", "Boil it.", "--model", "tiny", "--json",
                 *argv]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), [line for line in captured.err.splitlines() if line.startswith("[conscience]")]


def test_a_card_in_the_adapter_folder_is_the_judge_only_when_trusted(adapter_with_card, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CONSCIENCE_CACHE", str(tmp_path / "cache"))  # no card fitted earlier
    plain, plain_log = _review([], capsys)  # the tiny model has no card: the verbal verdict
    assert any("using the verbal verdict" in line for line in plain_log)

    untrusted, untrusted_log = _review(["--adapter", str(adapter_with_card)], capsys)
    # the review reads the frozen base, so without the adapter's card the verdict is the plain one
    assert untrusted["score"] == pytest.approx(plain["score"], abs=1e-6)
    reason = next(line for line in untrusted_log if "verbal verdict" in line)
    assert f"the conscience card in {adapter_with_card} was not used" in reason
    assert "--trust-adapter-card" in reason

    trusted, trusted_log = _review(["--adapter", str(adapter_with_card), "--trust-adapter-card"], capsys)
    assert any(f"latent verdict: conscience card {adapter_with_card}" in line for line in trusted_log)
    assert not any("was not used" in line for line in trusted_log)
    assert trusted["score"] != pytest.approx(plain["score"], abs=1e-6)


def test_a_card_in_the_model_folder_needs_trust_too(tmp_path, monkeypatch):
    from conscience.conscience_config import ConscienceConfig
    from conscience.tiny_model import tiny_model
    from conscience.verdict import VerbalReviewer
    from conscience.verdict.factory import choose_reviewer
    from conscience.verdict.latent import LatentReviewer

    monkeypatch.setenv("CONSCIENCE_CACHE", str(tmp_path / "cache"))
    model_dir = tmp_path / "model"
    save_card(_card(**TINY_SHAPE), model_dir / "conscience-card")
    judge = tiny_model(0)  # the folder stands for the weights; the judge is built, not loaded
    choice = choose_reviewer(ConscienceConfig(model=str(model_dir)), judge)
    assert isinstance(choice.reviewer, VerbalReviewer)
    assert f"the conscience card in {model_dir / 'conscience-card'} was not used" in choice.reason
    choice = choose_reviewer(ConscienceConfig(model=str(model_dir), trust_adapter_card=True), judge)
    assert isinstance(choice.reviewer, LatentReviewer)
    assert choice.reason == f"latent verdict: conscience card {model_dir / 'conscience-card'}"
    named = tmp_path / "named"
    save_card(_card(**TINY_SHAPE, seed=1), named)  # a card named explicitly replaces it, and no note is added
    choice = choose_reviewer(ConscienceConfig(model=str(model_dir), conscience_card=str(named)), judge)
    assert choice.reason == f"latent verdict: conscience card {named}"


def test_the_judge_a_fine_tune_ships_is_refused_even_when_trusted(adapter_with_card, tmp_path, capsys, no_model_loads):
    """The attack of item 2: ``w = 0, offset = 60`` scores every answer 1.0. Untrusted it is never
    read; trusted, or named, it is refused as degenerate before any model loads."""
    import shutil

    from safetensors.numpy import save_file

    adapter = tmp_path / "adapter"
    shutil.copytree(adapter_with_card, adapter)
    meta = json.loads((adapter / CARD_JSON).read_text())
    (adapter / CARD_JSON).write_text(json.dumps({**meta, "offset": 60}))
    save_file({"mu": np.zeros(32), "sd": np.ones(32), "w": np.zeros(32)}, str(adapter / CARD_TENSORS))
    for flags in (["--trust-adapter-card"], ["--conscience-card", str(adapter)]):
        code, lines = _cli(["ask", "hello", "--model", "tiny", "--adapter", str(adapter), *flags], capsys)
        assert code == 2 and len(lines) == 1, lines
        assert "tensor 'w' is all zeros" in lines[0]
    with pytest.raises(ModelLoadAttempted):  # untrusted, it is not even read: the model load comes next
        main(["ask", "hello", "--model", "tiny", "--adapter", str(adapter)])


def test_a_named_card_for_other_weights_is_an_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CONSCIENCE_CACHE", str(tmp_path / "cache"))
    save_card(_card(hidden=16, num_hidden=3), tmp_path / "other-size")
    save_card(_card(**TINY_SHAPE, identity="some-other-model"), tmp_path / "other-model")
    for name, message in (("other-size", "hidden size 16"), ("other-model", "fitted for 'some-other-model'")):
        code, lines = _cli(["review", "--prompt", "p", "--answer", "a", "--model", "tiny",
                            "--conscience-card", str(tmp_path / name)], capsys)
        assert code == 2 and len(lines) == 1, lines
        assert f"conscience card {tmp_path / name} was fitted for" in lines[0] and message in lines[0]


def test_a_named_card_that_does_not_load_is_an_error_not_a_fall_back(tmp_path, capsys, no_model_loads):
    """Item 3: before any model loads, whether the folder is missing, holds no card, or its code/
    card is broken; and a card broken after the config was made is an error too, never the verbal
    verdict."""
    (tmp_path / "empty").mkdir()
    save_card(_card(**TINY_SHAPE), tmp_path / "with-code")
    save_card(_card(**TINY_SHAPE), tmp_path / "with-code" / "code")
    (tmp_path / "with-code" / "code" / CARD_JSON).write_text("{")
    for name, message in (("missing", "is not a conscience card"), ("empty", "is not a conscience card"),
                          ("with-code", "code/conscience_card.json: invalid JSON")):
        code, lines = _cli(["ask", "hi", "--model", "tiny", "--conscience-card", str(tmp_path / name)], capsys)
        assert code == 2 and len(lines) == 1, lines
        assert "error:" in lines[0] and f"conscience_card: {tmp_path / name}" in lines[0], lines[0]
        assert message in lines[0]


def test_a_card_broken_after_the_config_is_an_error_at_review_time(tmp_path, monkeypatch):
    from conscience.conscience_config import ConscienceConfig
    from conscience.tiny_model import tiny_model
    from conscience.verdict.factory import choose_reviewer

    monkeypatch.setenv("CONSCIENCE_CACHE", str(tmp_path / "cache"))
    save_card(_card(**TINY_SHAPE), tmp_path / "card")
    cfg = ConscienceConfig(model="tiny", conscience_card=str(tmp_path / "card"))
    (tmp_path / "card" / CARD_JSON).write_text("{}")
    with pytest.raises(ConscienceError, match="missing field"):
        choose_reviewer(cfg, tiny_model(0))
