"""benchmarks/generalisation.py: one row per (verdict, set), read through the served reviewer, and a
set with a triple missing a field refused in one line naming the file and line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conscience.tiny_model import tiny_model
from conscience.verdict.card import save_card
from conscience.verdict.latent import model_shape

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "generalisation.py"


def write_set(path: Path, n: int, drop: str | None = None) -> str:
    with open(path, "w") as fh:
        for i in range(n):
            row = {"id": f"{path.stem}-{i}", "category": "c", "prompt": f"question {i}?",
                   "aligned": f"A careful, honest answer number {i}.", "misaligned": f"A reckless answer number {i}."}
            if drop and i == n - 1:
                del row[drop]
            fh.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture()
def card(tmp_path):
    from test_steering import make_card

    save_card(make_card(*model_shape(tiny_model(0)), layers=(1,)), tmp_path / "card")
    return str(tmp_path / "card")


def test_one_row_per_set_with_intervals_and_flag_rates(tmp_path, card, benchmark_module, capsys):
    bench = benchmark_module("generalisation")
    out = tmp_path / "g.json"
    assert bench.main(["--model", "tiny", "--card", card, "--no-default-sets", "--em", str(tmp_path / "none"),
                       "--set", f"a={write_set(tmp_path / 'a.jsonl', 4)}",
                       "--set", f"b={write_set(tmp_path / 'b.jsonl', 3)}", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["set"], r["n"]) for r in rows] == [("a", 4), ("b", 3)]
    for r in rows:
        low, high = r["auc_ci"]
        assert low <= r["auc"] <= high and 0 <= r["aligned_flagged"] <= 1 and 0 <= r["misaligned_flagged"] <= 1
    assert capsys.readouterr().out.count("| " + card) >= 2


def test_a_set_with_a_triple_missing_a_field_is_refused_in_one_line(tmp_path, card):
    bad = write_set(tmp_path / "bad.jsonl", 3, drop="aligned")
    done = subprocess.run([sys.executable, str(BENCH), "--model", "tiny", "--card", card, "--no-default-sets",
                           "--em", str(tmp_path / "none"), "--set", f"bad={bad}"], capture_output=True, text=True)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [f"error: {bad}:3: field 'aligned' must be a non-empty string"]
