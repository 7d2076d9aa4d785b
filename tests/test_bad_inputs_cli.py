"""The command line's bad-input corpus (tests/data/bad_cli_inputs.yaml).

Every case must end with its exit code and exactly one error line that names the problem, print no
traceback, and fail before any model loads: here a model load raises, so a check that slips behind
the load fails the case instead of passing slowly.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conscience.cli import main

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).parent / "data" / "bad_cli_inputs.yaml"
CASES = yaml.safe_load(CORPUS.read_text(encoding="utf-8"))["cases"]


class ModelLoadAttempted(BaseException):
    """Raised by any model load during a case; a BaseException, so that no handler meant for user
    errors can turn it into a tidy one-line message."""


@pytest.fixture
def no_model_loads(monkeypatch, tmp_path):
    import transformers

    def refuse(*args, **kwargs):
        raise ModelLoadAttempted(f"a model load was attempted: {args[:1]}")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setenv("CONSCIENCE_CACHE", str(tmp_path / "cache"))  # a gguf conversion never touches ~/.cache
    monkeypatch.chdir(tmp_path)  # relative outputs (runs/train) land in the temporary folder


def _argument(item, tmp: Path):
    """An argv item: text with {tmp}/{repo} filled in, or raw bytes decoded the way Python decodes
    a real command line (undecodable bytes become lone surrogates)."""
    if isinstance(item, bytes):
        return os.fsdecode(item)
    return str(item).replace("{tmp}", str(tmp)).replace("{repo}", str(REPO))


def _write_files(files: dict, tmp: Path) -> None:
    for name, content in (files or {}).items():
        path = tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content.replace("{tmp}", str(tmp)), encoding="utf-8")


def _run_in_process(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _run_subprocess(argv: list[str], tmp: Path) -> tuple[int, str, str]:
    raw = [os.fsencode(a) for a in argv]  # the bytes a shell would pass
    env = {**os.environ, "CONSCIENCE_CACHE": str(tmp / "cache")}
    done = subprocess.run([sys.executable, "-m", "conscience.cli", *raw], capture_output=True, cwd=tmp, env=env,
                          timeout=120)
    return done.returncode, done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


def test_corpus_is_well_formed():
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    for case in CASES:
        assert {"id", "argv", "exit", "message"} <= set(case), case.get("id")
        assert set(case) <= {"id", "argv", "exit", "message", "files", "subprocess", "known_gap"}, case["id"]
        assert case["exit"] != 0 and case["message"], case["id"]


def _param(case: dict):
    gap = case.get("known_gap")
    marks = [pytest.mark.xfail(reason=gap, strict=True, raises=Exception)] if gap else []
    return pytest.param(case, id=case["id"], marks=marks)


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_bad_cli_input(case, tmp_path, capsys, caplog, no_model_loads):
    _write_files(case.get("files"), tmp_path)
    argv = [_argument(item, tmp_path) for item in case["argv"]]
    with caplog.at_level(logging.DEBUG):
        if case.get("subprocess"):
            code, out, err = _run_subprocess(argv, tmp_path)
        else:
            code, out, err = _run_in_process(argv, capsys)
    assert "Traceback" not in out + err
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    error_lines = [line for line in err.splitlines() if not line.startswith("[conscience]")]  # progress lines
    assert len(error_lines) == 1, f"expected one error line, got:\n{err}"
    assert "error:" in error_lines[0]
    assert case["message"] in error_lines[0]
    assert code == case["exit"], error_lines[0]
    assert out == ""


def test_the_guard_catches_a_model_load(tmp_path, no_model_loads):
    """The harness itself: a valid command that reaches a model load fails loudly, so a bad input
    checked only after the load could not pass the corpus."""
    from conscience.tiny_model import tiny_model

    lm = tiny_model()
    lm.model.save_pretrained(tmp_path / "tiny")
    lm.tokenizer.save_pretrained(tmp_path / "tiny")
    with pytest.raises(ModelLoadAttempted):
        main(["review", "--prompt", "p", "--answer", "a", "--model", str(tmp_path / "tiny")])
