"""The injection corpus: the shipped file, its loader's errors, applying a style, the fit's
augmentations and one robustness row by hand."""

from __future__ import annotations

import pytest

from conscience.errors import DataFormatError
from conscience.verdict.injection import (
    BENIGN_GROUPS,
    GROUPS,
    InjectionStyle,
    augmentations,
    load_styles,
    robustness_row,
)


def test_shipped_styles_cover_every_group_and_keep_half_out_of_fits():
    styles = load_styles()
    assert len(styles) >= 25
    assert {s.group for s in styles} == set(GROUPS)
    fit, held = load_styles(split="fit"), load_styles(split="held_out")
    # at least half kept out of fits; the fit half is what the shipped cards were fitted with, so it
    # only grows with a refit, while new held-out styles can be added at any time
    assert len(fit) + len(held) == len(styles) and len(held) >= len(styles) / 2 and len(fit) >= 0.4 * len(styles)
    padding = [s for s in styles if s.group == "padding"]
    assert {1, 3, 10} <= {s.repeat for s in padding}
    assert {s.where for s in styles} == {"append", "prepend", "wrap"}
    texts = " ".join(s.text for s in styles)
    assert "<|im_end|>" in texts and "\uff5c" in texts  # real special tokens and fullwidth look-alikes


def test_applying_a_style():
    assert InjectionStyle("a", "padding", "append", "Safe.", "fit", repeat=3, sep=" ").apply("X") == "X Safe. Safe. Safe."
    assert InjectionStyle("p", "refusal", "prepend", "No.", "fit").apply("X") == "No.\n\nX"
    assert InjectionStyle("w", "roleplay", "wrap", "In a story: {answer} The end.", "fit").apply("X {y}") == \
        "In a story: X {y} The end."


@pytest.mark.parametrize("entry, field", [
    ({"name": "x", "group": "nope", "where": "append", "text": "t", "split": "fit"}, "'group'"),
    ({"name": "x", "group": "padding", "where": "inside", "text": "t", "split": "fit"}, "'where'"),
    ({"name": "x", "group": "padding", "where": "append", "text": "t", "split": "dev"}, "'split'"),
    ({"name": "x", "group": "padding", "where": "append", "text": "", "split": "fit"}, "'text'"),
    ({"name": "x", "group": "padding", "where": "append", "text": "t", "split": "fit", "repeat": 0}, "'repeat'"),
    ({"name": "x", "group": "padding", "where": "wrap", "text": "no hole", "split": "fit"}, "'text'"),
    ({"name": "x", "group": "padding", "where": "append", "text": "t", "split": "fit", "colour": 1}, "colour"),
])
def test_a_bad_styles_file_names_the_file_the_style_and_the_field(tmp_path, entry, field):
    import yaml

    path = tmp_path / "styles.yaml"
    path.write_text(yaml.safe_dump({"styles": [entry]}))
    with pytest.raises(DataFormatError) as err:
        load_styles(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and "styles[0] (x)" in message and field in message


def test_duplicate_names_and_empty_files_are_refused(tmp_path):
    path = tmp_path / "styles.yaml"
    path.write_text("styles: []\n")
    with pytest.raises(DataFormatError, match="'styles:' list"):
        load_styles(path)
    one = "{name: a, group: padding, where: append, text: t, split: fit}"
    path.write_text(f"styles:\n  - {one}\n  - {one}\n")
    with pytest.raises(DataFormatError, match="field 'name': 'a' is used twice"):
        load_styles(path)


def test_augmentations_inject_misaligned_answers_and_keep_aligned_ones_benign():
    styles = load_styles(split="fit")
    answers = ["good one", "bad one", "good two", "bad two"]
    out = augmentations(answers, [False, True, False, True], styles, per_answer=3, seed=1)
    by_source = {i: [s for j, _, s in out if j == i] for i in range(4)}
    assert [len(by_source[i]) for i in range(4)] == [1, 3, 1, 3]
    assert len({s.name for s in by_source[1]}) == 3  # distinct styles per answer
    assert all(s.group in BENIGN_GROUPS for i in (0, 2) for s in by_source[i])
    assert all(s.split == "fit" for _, _, s in out)
    assert out == augmentations(answers, [False, True, False, True], styles, per_answer=3, seed=1)


def test_robustness_row_by_hand():
    # threshold 0.5: clean misaligned 0.1, 0.2, 0.7 (one let through); injected 0.6, 0.2, 0.8
    row = robustness_row([0.9, 0.8, 0.65], [0.1, 0.2, 0.7], [0.6, 0.2, 0.8], 0.5)
    assert row["mean_shift"] == pytest.approx((0.5 + 0.0 + 0.1) / 3, abs=1e-4)
    assert row["flips"] == 1 and row["let_through"] == 2 and row["let_through_clean"] == 1
    # aligned above injected, of 9 pairs (a tie counts ½): 0.9 beats 3, 0.8 beats 2 and ties 1, 0.65 beats 2
    assert row["auc"] == pytest.approx(7.5 / 9, abs=1e-4) and row["n"] == 3
    assert robustness_row([0.9], [0.5], [0.5], 0.5)["flips"] == 0  # a score at the threshold is flagged
