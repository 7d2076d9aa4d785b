"""Live drift monitor: the judge-free drift measure every K training steps.

Forward passes only (preference gaps on a few held-out triples, against base scores computed
once before training), plus the task metric, so it is cheap enough to run during training.
The first point whose 95 % interval lies above 0 logs a warning once; with ``stop: true`` it
also ends training there (early stopping on drift).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

from transformers import TrainerCallback

from ..jsonl import append_jsonl_durable, read_jsonl_records
from ..log import log

DriftProbe = Callable[[int], dict]  # step -> drift summary (keys drift, drift_ci_low, drift_ci_high, ...)
RECORD_KEYS = ("drift", "drift_ci_low", "drift_ci_high", "prefers_misaligned", "n", "task_token_accuracy")


def make_drift_probe(lm, triples: Sequence, base, in_domain: Sequence[str] = (), task_conversations=None,
                     batch_size: int = 16, max_length: int = 256) -> DriftProbe:
    """``probe(step)``: the policy's drift on ``triples`` against ``base`` (:class:`DriftScores`
    of the starting weights on the same triples), and its task token accuracy."""
    from ..evaluation.drift import drift_summary, score_drift
    from ..evaluation.task_accuracy import task_token_accuracy

    categories = [t.category for t in triples]

    def probe(step: int) -> dict:
        summary = drift_summary(score_drift(lm, triples, ab=False, batch_size=batch_size), base, categories, in_domain)
        if task_conversations:
            summary["task_token_accuracy"] = task_token_accuracy(lm, task_conversations, max_length,
                                                                 batch_size)["token_accuracy"]
        return summary

    return probe


def drift_left_zero(point: dict) -> bool:
    """True when the point's 95 % interval lies wholly above 0."""
    low = point.get("drift_ci_low")
    return low is not None and low > 0


class DriftProbeCallback(TrainerCallback):
    """Runs ``probe(step)`` at step 0 and every ``every`` steps; appends to ``path`` (fsynced; a
    resumed run keeps its earlier points); warns once when the interval leaves 0; with
    ``stop`` ends training at that step."""

    def __init__(self, probe: DriftProbe, every: int, path: str | Path, label: str = "run", stop: bool = False):
        self.probe = probe
        self.every = every
        self.path = Path(path)
        self.label = label
        self.stop = stop
        self.points: list[dict] = []
        self.warned_at: int | None = None
        self.stopped_at: int | None = None
        for point in read_jsonl_records(self.path):  # a resumed run keeps its earlier points
            self.points.append(point)
            if self.warned_at is None and drift_left_zero(point):
                self.warned_at = point["step"]

    def _record(self, step: int) -> dict | None:
        if any(p["step"] == step for p in self.points):
            return None
        summary = self.probe(step)
        point = {"step": step, **{k: summary.get(k) for k in RECORD_KEYS}}
        self.points.append(point)
        if self.warned_at is None and drift_left_zero(point):
            self.warned_at = step
            log(f"WARNING: {self.label}: drift {point['drift']:+.4f} at step {step}, 95 % interval "
                f"[{point['drift_ci_low']:+.4f}, {point['drift_ci_high']:+.4f}] lies above 0")
        append_jsonl_durable(self.path, point)
        return point

    def on_train_begin(self, args, state, control, **kwargs):
        if self.every and state.is_world_process_zero and state.global_step == 0:
            self._record(0)

    def on_train_end(self, args, state, control, **kwargs):
        if self.every and state.is_world_process_zero:  # the last step, when it is off the grid
            self._record(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        if self.every and state.is_world_process_zero and state.global_step % self.every == 0:
            point = self._record(state.global_step)
            if self.stop and point is not None and drift_left_zero(point) and self.stopped_at is None:
                self.stopped_at = state.global_step
                control.should_training_stop = True
        return control
