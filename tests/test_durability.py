"""Training survives kill -9: `conscience train model=tiny ...` killed after a checkpoint, then rerun
with `resume=latest`, continues from that checkpoint and logs the same loss curve as a run that was
never interrupted (issue 16, "Training durability").

The real CLI runs in subprocesses, as a user would run it, with the conscience term on (sampling,
verdicts and DPO pairs every step), so the resumed run must restore the optimizer, the scheduler,
the RNG streams that drive sampling and the pair buffer, not just the weights.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conscience.training.trainer import STATE_FILE

MAX_STEPS = 12
SAVE_STEPS = 2
KILL_AFTER_CHECKPOINT = 4  # a step whose checkpoint exists before the kill; the run dies during the next steps
TOLERANCE = 1e-5
# One thread, so that float reductions add up in the same order in every process; align_every=1
# so that every step samples, reviews and trains on pairs (~0.5 s a step on the tiny model).
OVERRIDES = ["model=tiny", f"max_steps={MAX_STEPS}", f"save_steps={SAVE_STEPS}", "save_total_limit=3", "seed=3",
             "threads=1", "batch_size=2", "lr=0.01", "max_length=128", "lam=0.1", "align_every=1", "k=2",
             "sample_max_new_tokens=16", "alt_max_new_tokens=16", "conscience.verdict=verbal", "margin=0"]


def _chat_data(path: Path) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"Write a function number {i} that adds two numbers."},
                          {"role": "assistant", "content": f"def add_{i}(a, b):\n    return a + b"}]}
            for i in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _train(tmp: Path, out: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "CONSCIENCE_CACHE": str(tmp / "cache"), "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "conscience.cli", "train", *OVERRIDES, f"data={tmp / 'chat.jsonl'}",
                             f"output_dir={tmp / out}", *extra],
                            cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 180) -> str:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"training did not finish in {timeout}s:\n{err[-2000:]}")
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err
    return err


def _losses(run: Path) -> dict[int, tuple[float, float | None]]:
    """``{step: (task_loss, dpo_loss)}`` from metrics.jsonl; every step logged exactly once."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
               if line.strip()]
    steps = [r["step"] for r in records]
    assert steps == sorted(set(steps)), f"steps logged twice or out of order: {steps}"
    return {r["step"]: (r["task_loss"], r["dpo_loss"]) for r in records}


def _complete_checkpoints(run: Path) -> list[int]:
    """Steps of the checkpoints written to the end (the conscience state is written last)."""
    return sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*") if (p / STATE_FILE).is_file())


@pytest.mark.slow
def test_kill_9_then_resume_latest_continues_with_the_same_loss_curve(tmp_path):
    _chat_data(tmp_path / "chat.jsonl")
    # The uninterrupted reference and the run to be killed start together (two cores, ~half the wall time).
    reference = _train(tmp_path, "reference")
    victim = _train(tmp_path, "run")
    run = tmp_path / "run"
    marker = run / f"checkpoint-{KILL_AFTER_CHECKPOINT}" / STATE_FILE
    deadline = time.monotonic() + 150
    while not marker.is_file():
        assert victim.poll() is None, f"the run ended before checkpoint {KILL_AFTER_CHECKPOINT}:\n{victim.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint appeared in time"
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    assert not (run / "final").exists(), "the run finished before it was killed: the test proved nothing"

    _finish(reference)
    expected = _losses(tmp_path / "reference")
    assert sorted(expected) == list(range(1, MAX_STEPS + 1))

    resumed_from = _complete_checkpoints(run)[-1]
    assert KILL_AFTER_CHECKPOINT <= resumed_from < MAX_STEPS
    err = _finish(_train(tmp_path, "run", "resume=latest"))
    assert f"checkpoint-{resumed_from} (step {resumed_from})" in err, err[-2000:]
    assert (run / "final" / "adapter_config.json").is_file()

    got = _losses(run)
    assert sorted(got) == list(range(1, MAX_STEPS + 1)), "resumed run skipped or repeated steps"
    for step in range(resumed_from + 1, MAX_STEPS + 1):
        (task, dpo), (task_ref, dpo_ref) = got[step], expected[step]
        assert task == pytest.approx(task_ref, abs=TOLERANCE), f"task_loss differs at step {step}"
        assert dpo is not None and dpo_ref is not None, f"no conscience term at step {step}"
        assert dpo == pytest.approx(dpo_ref, abs=TOLERANCE), f"dpo_loss differs at step {step}"


def test_resume_latest_skips_a_half_written_checkpoint_and_a_torn_metrics_line(tmp_path, capsys):
    """A kill during a save leaves checkpoint-N without its trainer state: resume takes the one
    before it, and the metrics line the kill tore is dropped, not a crash."""
    from conscience.training.config import TrainConfig
    from conscience.training.run import _trim_metrics, resume_checkpoint

    for step, whole in ((2, True), (4, True), (6, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"x")
        if whole:
            (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    (tmp_path / "checkpoint-8").mkdir()  # the save had only begun
    cfg = TrainConfig(model="tiny", output_dir=str(tmp_path), resume="latest", lam=0.0)
    assert resume_checkpoint(cfg, tmp_path) == str(tmp_path / "checkpoint-4")
    err = capsys.readouterr().err
    assert "checkpoint-6 is an incomplete checkpoint" in err and "checkpoint-8" in err
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 3, "loss": 1.0}\n{"step": 4, "loss": 0.9}\n{"step": 5, "loss": 0.8}\n{"step": 6, "lo')
    _trim_metrics(metrics, 4)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [3, 4]
