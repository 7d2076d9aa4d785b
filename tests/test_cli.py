"""CLI bad input: clear one-line errors and exit code 2, never a traceback; no model is loaded."""

from __future__ import annotations

import pytest

from conscience.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


def test_empty_prompt(capsys):
    code, err = run(capsys, "ask", "   ")
    assert code == 2 and "prompt is empty" in err


def test_unknown_model_spec(capsys):
    code, err = run(capsys, "ask", "hi", "--model", "no/such/model/here")
    assert code == 2 and "unknown model spec" in err


def test_missing_gguf_file(capsys, tmp_path):
    code, err = run(capsys, "review", "--prompt", "p", "--answer", "a", "--model", str(tmp_path / "m.gguf"))
    assert code == 2 and "GGUF file not found" in err


def test_unreadable_framings_yaml(capsys, tmp_path):
    bad = tmp_path / "q.yaml"
    bad.write_text("framings:\n  - name: x\n    question: [unclosed\n")
    code, err = run(capsys, "ask", "hi", "--framings-file", str(bad))
    assert code == 2 and str(bad) in err and "line" in err


def test_framings_yaml_missing_field(capsys, tmp_path):
    bad = tmp_path / "q.yaml"
    bad.write_text("framings:\n  - name: x\n")
    code, err = run(capsys, "ask", "hi", "--framings-file", str(bad))
    assert code == 2 and "lacks the field 'question'" in err


def test_unknown_config_key(capsys):
    code, err = run(capsys, "ask", "hi", "--set", "thresold=0.3")
    assert code == 2 and "unknown key" in err and "thresold" in err


def test_bad_threshold(capsys):
    with pytest.raises(SystemExit) as exc:  # refused by argparse, with the config's own parser
        main(["ask", "hi", "--threshold", "1.5"])
    assert exc.value.code == 2 and "argument --threshold: must lie in [0, 1]" in capsys.readouterr().err


def test_question_and_framings_conflict(capsys):
    code, err = run(capsys, "ask", "hi", "--question", "Fine?", "--framing", "aligned")
    assert code == 2 and "either question or framings" in err


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("ask", "review", "train", "eval", "experiment", "serve", "calibrate"):
        assert command in out
