"""Training survives kill -9: `conscience train model=tiny ...` killed after a checkpoint, then rerun
with `resume=latest`, continues from that checkpoint and logs the same loss curve as a run that was
never interrupted (issue 16, "Training durability").

The real CLI runs in subprocesses, as a user would run it, with the conscience term on (sampling,
verdicts and DPO pairs every step), so the resumed run must restore the optimizer, the scheduler,
the RNG streams that drive sampling and the pair buffer, not just the weights.

Then (issue 29) what a kill or a bad disk leaves behind: damaged checkpoints are verified and
skipped with a warning naming the file, and a finished run resumed is a no-op.
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

from conscience.training.checkpoints import STATE_FILE, TRAINER_STATE

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
    """Steps of the checkpoints written to the end (the Trainer's state is written last)."""
    return sorted(int(p.name.split("-")[1]) for p in run.glob("checkpoint-*") if (p / TRAINER_STATE).is_file())


@pytest.mark.slow
def test_kill_9_then_resume_latest_continues_with_the_same_loss_curve(tmp_path):
    _chat_data(tmp_path / "chat.jsonl")
    # The uninterrupted reference and the run to be killed start together (two cores, ~half the wall time).
    reference = _train(tmp_path, "reference")
    victim = _train(tmp_path, "run")
    run = tmp_path / "run"
    marker = run / f"checkpoint-{KILL_AFTER_CHECKPOINT}" / TRAINER_STATE
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


# --- checkpoints verified on resume (issue 29, items 6 and 7) ---------------------------------------

def _tiny_cfg(out: Path, **overrides):
    from test_training import tiny_config

    return tiny_config(out.parent, output_dir=str(out), **{"max_steps": 2, "save_steps": 1, **overrides})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 2-step run with the conscience term on and a checkpoint at each step; records,
    at each checkpoint's completion (trainer_state.json written), whether conscience_state.json
    was already there."""
    import torch
    from transformers import TrainerState

    from conscience.tiny_model import tiny_model
    from conscience.training import run_training

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    state_present = []
    real = TrainerState.save_to_json

    def save_to_json(self, json_path):
        state_present.append(Path(json_path).with_name(STATE_FILE).is_file())
        return real(self, json_path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(TrainerState, "save_to_json", save_to_json)
        run_training(_tiny_cfg(out), lm=tiny_model(0))
    return out, state_present


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(tiny_run[0], tmp_path / "run"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_conscience_state_is_written_before_the_checkpoint_is_marked_complete(tiny_run):
    _, state_present = tiny_run
    assert state_present == [True, True]  # checkpoint-1 and checkpoint-2


def test_a_save_over_an_abandoned_checkpoint_is_incomplete_until_it_ends(run_copy, monkeypatch):
    """A rerun saves checkpoint-1 again over the earlier run's: killed halfway (here: after the weights,
    before the optimizer), the folder must not pass for complete on the old trainer_state.json."""
    from transformers import Trainer

    from conscience.errors import ConscienceError
    from conscience.tiny_model import tiny_model
    from conscience.training import run_training
    from conscience.training.checkpoints import verify_checkpoint

    def killed(self, output_dir):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", killed)
    with pytest.raises(KeyboardInterrupt):
        run_training(_tiny_cfg(run_copy), lm=tiny_model(0))
    with pytest.raises(ConscienceError, match="incomplete checkpoint"):
        verify_checkpoint(run_copy / "checkpoint-1", needs_state=True)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {  # what a kill, a full disk or a bad copy leaves; the file the warning must name
    "truncated adapter": (lambda c: _truncate(c / "adapter_model.safetensors"), "adapter_model.safetensors"),
    "adapter header only": (lambda c: (c / "adapter_model.safetensors").write_bytes(
        (c / "adapter_model.safetensors").read_bytes()[:200]), "adapter_model.safetensors"),
    "truncated optimizer": (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt"),
    "empty scheduler": (lambda c: (c / "scheduler.pt").write_bytes(b""), "scheduler.pt"),
    "truncated rng": (lambda c: _truncate(c / "rng_state.pth"), "rng_state.pth"),
    "no optimizer": (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt"),
    "invalid conscience state": (lambda c: (c / STATE_FILE).write_text('{"buffer": '), STATE_FILE),
    "conscience state of the wrong shape": (lambda c: (c / STATE_FILE).write_text(
        json.dumps({"buffer": {"capacity": 8}, "sampled_at": 1})), STATE_FILE),
    "no conscience state": (lambda c: (c / STATE_FILE).unlink(), STATE_FILE),
    "string step": (lambda c: (c / TRAINER_STATE).write_text(json.dumps(
        {**json.loads((c / TRAINER_STATE).read_text()), "global_step": "2"})), TRAINER_STATE),
    "invalid adapter config": (lambda c: (c / "adapter_config.json").write_text("{"), "adapter_config.json"),
    "interrupted save": (lambda c: (c / TRAINER_STATE).unlink(), "incomplete checkpoint"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_resume_latest_falls_back_past_a_damaged_checkpoint_naming_the_file(damage, run_copy, capsys):
    from conscience.training.run import resume_checkpoint

    damage_it, named = DAMAGE[damage]
    damage_it(run_copy / "checkpoint-2")
    cfg = _tiny_cfg(run_copy, resume="latest", max_steps=4)
    assert resume_checkpoint(cfg, run_copy) == (str(run_copy / "checkpoint-1"), 1)
    warning = [line for line in capsys.readouterr().err.splitlines() if "checkpoint-2" in line]
    assert len(warning) == 1 and named in warning[0] and "skipping checkpoint-2" in warning[0], warning


def test_a_missing_conscience_state_is_harmless_to_plain_sft(run_copy):
    from conscience.training.run import resume_checkpoint

    (run_copy / "checkpoint-2" / STATE_FILE).unlink()
    cfg = _tiny_cfg(run_copy, resume="latest", max_steps=4, lam=0.0)  # no pair buffer to restore
    assert resume_checkpoint(cfg, run_copy) == (str(run_copy / "checkpoint-2"), 2)


def test_a_damaged_checkpoint_named_explicitly_is_a_one_line_error(run_copy):
    from conscience.errors import ConscienceError
    from conscience.training.run import resume_checkpoint

    _truncate(run_copy / "checkpoint-2" / "optimizer.pt")
    cfg = _tiny_cfg(run_copy, resume=str(run_copy / "checkpoint-2"), max_steps=4)
    with pytest.raises(ConscienceError, match=r"checkpoint-2/optimizer.pt: does not load") as info:
        resume_checkpoint(cfg, run_copy)
    assert "\n" not in str(info.value)
    for folder in ("checkpoint-1", "checkpoint-2"):
        (run_copy / folder / TRAINER_STATE).unlink()
    with pytest.raises(ConscienceError, match=r"no checkpoint in .* is intact"):
        resume_checkpoint(_tiny_cfg(run_copy, resume="latest"), run_copy)


def test_training_resumes_from_the_newest_intact_checkpoint(run_copy, capsys):
    """End to end: the last checkpoint's optimizer is truncated; the run resumes from the one before
    it, redoes step 2 and finishes at max_steps, with each step logged once."""
    from conscience.tiny_model import tiny_model
    from conscience.training import run_training

    _truncate(run_copy / "checkpoint-2" / "optimizer.pt")
    run_training(_tiny_cfg(run_copy, resume="latest", max_steps=3), lm=tiny_model(0))
    assert "resuming from" in capsys.readouterr().err
    steps = [json.loads(line)["step"] for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]
    assert json.loads((run_copy / "checkpoint-3" / TRAINER_STATE).read_text())["global_step"] == 3


def test_resume_latest_of_a_finished_run_is_a_no_op_that_says_so(run_copy, capsys, monkeypatch):
    """No step past max_steps, no checkpoint rotated away, no model loaded, no file changed."""
    import conscience.training.run as run_module
    from conscience.training import run_training

    def no_load(*args, **kwargs):
        raise AssertionError("a finished run loaded a model")

    monkeypatch.setattr(run_module, "load_model", no_load)
    before = _snapshot(run_copy)
    result = run_training(_tiny_cfg(run_copy, resume="latest", save_total_limit=1))
    assert "already finished" in capsys.readouterr().err
    assert _snapshot(run_copy) == before
    assert result["metrics"]["steps"] == 2.0 and result["final"] == str(run_copy / "final")


def test_a_finished_run_killed_before_final_gets_final_from_its_last_checkpoint(run_copy, capsys):
    import shutil

    from peft import PeftModel

    from conscience.tiny_model import tiny_model
    from conscience.training import run_training

    shutil.rmtree(run_copy / "final")
    metrics_before = (run_copy / "metrics.jsonl").read_bytes()
    run_training(_tiny_cfg(run_copy, resume="latest"), lm=tiny_model(0))
    assert "without training" in capsys.readouterr().err
    final = run_copy / "final"
    assert (final / "adapter_model.safetensors").read_bytes() == \
        (run_copy / "checkpoint-2" / "adapter_model.safetensors").read_bytes()
    assert not (final / "optimizer.pt").exists() and (final / "tokenizer_config.json").exists()
    PeftModel.from_pretrained(tiny_model(0).model, final)
    assert sorted(p.name for p in run_copy.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert (run_copy / "metrics.jsonl").read_bytes() == metrics_before


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path):
    from conscience.training.run import _trim_metrics

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 3, "loss": 1.0}\n{"step": 4, "loss": 0.9}\n{"step": 5, "loss": 0.8}\n{"step": 6, "lo')
    _trim_metrics(metrics, 4)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [3, 4]
