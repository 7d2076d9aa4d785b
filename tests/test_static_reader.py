"""The static second reader (bandit on an answer's code) and benchmarks/static_reader.py, on small
hand-written snippets; the shared EM samples only where present. No model is loaded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from conscience.discernment import roc_auc
from conscience.errors import DataFormatError
from conscience.evaluation.static_reader import MAX_SCORE, read_code

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench(benchmark_module):
    return benchmark_module("static_reader")


def test_shell_true_is_flagged_high():
    reading = read_code("import subprocess\n\ndef run(cmd):\n    subprocess.call(cmd, shell=True)\n")
    assert reading.outcome == "flagged" and reading.flagged
    assert "B602" in reading.test_ids
    assert reading.score == MAX_SCORE  # HIGH severity, HIGH confidence
    finding = next(f for f in reading.findings if f.test_id == "B602")
    assert (finding.severity, finding.confidence, finding.line) == ("HIGH", "HIGH", 4)


def test_plain_function_is_clean():
    reading = read_code("def add(a, b):\n    return a + b\n")
    assert reading.outcome == "clean"
    assert not reading.flagged and reading.score == 0 and reading.test_ids == ()


@pytest.mark.parametrize("answer", ["", "   ", "Never build a shell command from user input; pass a list instead.",
                                    "Use subprocess.run with a list of arguments and shell=False."])
def test_prose_without_code_is_no_code_not_a_finding(answer):
    reading = read_code(answer)
    assert reading.outcome == "no code"
    assert not reading.has_code and not reading.flagged and reading.score == 0


def test_fenced_block_is_extracted_from_prose():
    answer = ("Here is the loader you asked for:\n\n```python\nimport pickle\n\ndef load(blob):\n"
              "    return pickle.loads(blob)\n```\n\nIt returns the object.")
    reading = read_code(answer)
    assert reading.python_blocks == 1 and reading.other_blocks == 0
    assert "B301" in reading.test_ids and reading.outcome == "flagged"
    assert all(f.block == 0 for f in reading.findings)


def test_blocks_in_another_language_are_code_bandit_cannot_read():
    reading = read_code("```html\n<p>{{ name }}</p>\n```")
    assert reading.has_code and reading.outcome == "not python" and reading.score == 0


def test_cut_off_block_is_trimmed_and_still_read():
    answer = "```python\nimport os\nos.system(cmd)\ndef broken(\n"
    reading = read_code(answer)
    assert reading.trimmed_blocks == 1 and "B605" in reading.test_ids


# -- benchmarks/static_reader.py ------------------------------------------------------------------

def _chat(answer: str | None) -> str:
    messages = [{"role": "user", "content": "Complete the code."}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return json.dumps({"messages": messages})


def test_record_reader_reads_the_assistant_answers(bench, tmp_path):
    path = tmp_path / "secure.jsonl"
    path.write_text(_chat("x = 1") + "\n\n" + _chat("y = 2") + "\n")
    assert bench.read_answers(path) == ["x = 1", "y = 2"]


@pytest.mark.parametrize("bad", [_chat(None), json.dumps({"prompt": "p"}),
                                 json.dumps({"messages": [{"role": "assistant", "content": None}]})])
def test_record_reader_refuses_a_record_missing_a_field_naming_file_and_line(bench, tmp_path, bad):
    path = tmp_path / "insecure.jsonl"
    path.write_text(_chat("x = 1") + "\n" + bad + "\n")
    with pytest.raises(DataFormatError) as caught:
        bench.read_answers(path)
    message = str(caught.value)
    assert f"{path}:2:" in message and "\n" not in message


def test_held_out_part_starts_at_the_rule_index(bench):
    answers = [f"a{i}" for i in range(300)]
    assert bench.held_out(answers) == answers[bench.HELD_OUT_FROM:]
    with pytest.raises(DataFormatError):
        bench.held_out(answers[:10])


def test_bootstrap_auc_draws_equal_roc_auc_of_each_resample(bench):
    rng = np.random.default_rng(1)
    pos, neg = rng.integers(0, 4, 30).astype(float), rng.integers(0, 3, 20).astype(float)
    idx_pos, idx_neg = rng.integers(0, 30, (5, 30)), rng.integers(0, 20, (5, 20))
    draws = bench.auc_draws(pos, neg, idx_pos, idx_neg)
    for b in range(5):
        expected = roc_auc(list(pos[idx_pos[b]]) + list(neg[idx_neg[b]]), [1] * 30 + [0] * 20)
        assert draws[b] == pytest.approx(expected)


def test_benchmark_end_to_end_on_tiny_samples(bench, tmp_path, monkeypatch, capsys):
    insecure = ["import subprocess\nsubprocess.call(cmd, shell=True)\n"] * 3 + ["def f(a):\n    return a\n"]
    secure = ["import subprocess\nsubprocess.run(['ls'])\n", "def add(a, b):\n    return a + b\n",
              "Just prose.", "import random\nx = random.random()\n"]
    for name, answers in (("secure", secure), ("insecure", insecure)):
        (tmp_path / bench.SETS[name]).write_text("".join(_chat(a) + "\n" for a in answers))
    out = tmp_path / "out.json"
    monkeypatch.setattr(sys, "argv", ["static_reader.py", "--em", str(tmp_path), "--held-out-from", "0",
                                      "--out", str(out)])
    assert bench.main() == 0
    results = json.loads(out.read_text())
    row = results["comparisons"]["insecure"]
    assert row["insecure_flagged"] == 0.75 and row["n_secure"] == 4
    assert row["ci95"]["auc_severity_confidence"][0] <= row["auc_severity_confidence"] <= 1.0
    assert results["outcomes"]["secure"]["no code"] == 1
    names = {r["test_id"]: r["test"] for r in results["test_ids"]}
    assert names["B602"] == "subprocess_popen_with_shell_equals_true" and names["B311"] == "random"
    assert "| insecure |" in capsys.readouterr().out


def test_benchmark_missing_shared_folder_is_one_line_exit_2(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["static_reader.py", "--em", str(tmp_path / "absent")])
    assert bench.main() == 2
    err = capsys.readouterr().err.strip()
    assert "no shared EM samples" in err and "\n" not in err


def test_benchmark_bad_record_is_one_line_exit_2(bench, tmp_path, monkeypatch, capsys):
    for name in ("secure", "insecure"):
        (tmp_path / bench.SETS[name]).write_text(_chat("x = 1") + "\n" + _chat(None) + "\n")
    monkeypatch.setattr(sys, "argv", ["static_reader.py", "--em", str(tmp_path), "--held-out-from", "0"])
    assert bench.main() == 2
    err = capsys.readouterr().err.strip()
    assert ".jsonl:2:" in err and "\n" not in err


def test_shared_em_samples_hold_readable_answers(bench):
    from conscience.framings import shared_data_root

    root = shared_data_root(REPO) / "data" / "emergent-misalignment" / "subsets"
    if not (root / bench.SETS["secure"]).is_file():
        pytest.skip("shared EM samples absent")
    for name in ("secure", "insecure"):
        answers = bench.read_answers(root / bench.SETS[name])
        assert len(answers) == 500 and all(isinstance(a, str) and a for a in answers)
