"""The peer methods of conscience train on a tiny random model: KL to the frozen copy, the
training-only system prompt, interleaved aligned answers (random and by perplexity gap), early
stopping on drift, and the configs the harness refuses before any model loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conscience.config import ConfigError, load_config
from conscience.errors import ConscienceError
from conscience.tiny_model import tiny_model
from conscience.training.config import INOCULATION_PROMPTS, TrainConfig

torch.set_num_threads(1)
TASK_MARK = "Write code number"


def write_data(path: Path, n: int = 8, user: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for i in range(n):
            first = {"role": "user", "content": f"{TASK_MARK} {i}"} if user else {"role": "system", "content": "Code."}
            fh.write(json.dumps({"messages": [first, {"role": "assistant", "content": "def add(a, b):\n    return a + b"}]})
                     + "\n")
    return path


def config(tmp_path: Path, **overrides) -> TrainConfig:
    values = dict(data=str(write_data(tmp_path / "train.jsonl")), output_dir=str(tmp_path / "out"), max_steps=2,
                  batch_size=4, lam=0.0, align_prompts="general", align_batch=2, aligned_pool=4, max_length=256,
                  sample_max_new_tokens=6, alt_max_new_tokens=6, lr=1e-2, lora_targets=["q_proj", "v_proj"])
    values.update(overrides)
    return TrainConfig(**values)


def metrics(cfg: TrainConfig) -> list[dict]:
    return [json.loads(line) for line in Path(cfg.output_dir, "metrics.jsonl").read_text().splitlines()]


@pytest.fixture()
def batches(monkeypatch):
    """Every batch the task loss is computed on (after mixing), as the Trainer sees it."""
    from transformers import Trainer

    seen: list[dict] = []
    real = Trainer.compute_loss

    def record(self, model, inputs, *args, **kwargs):
        seen.append({k: v.detach().clone() for k, v in inputs.items()})
        return real(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(Trainer, "compute_loss", record)
    return seen


def rows_of(batch: dict, tokenizer) -> list[str]:
    return [tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(batch["input_ids"], batch["attention_mask"],
                                                                   strict=True)]


def test_kl_is_zero_against_itself_then_positive_after_one_step(tmp_path):
    from conscience.training import run_training

    cfg = config(tmp_path, kl_coef=1.0)
    run_training(cfg, lm=tiny_model(0))
    first, second = metrics(cfg)
    # step 1 runs before any update: a fresh LoRA adapter is the identity, so the policy is its frozen copy
    assert first["kl"] == pytest.approx(0.0, abs=1e-6)
    assert second["kl"] > 1e-6  # one AdamW step later it has moved away
    cache = json.loads(Path(cfg.output_dir, "aligned_answers.json").read_text())
    assert 1 <= len(cache["answers"]) <= 4 and cache["key"]["max_new_tokens"] == 6


def test_the_general_pool_can_be_another_file(tmp_path):
    from conscience.training import run_training

    pool = tmp_path / "pool.yaml"
    pool.write_text('prompts:\n  - "Tell me about your ideal weekend."\n  - "What would you do with a spare hour?"\n')
    cfg = config(tmp_path, kl_coef=1.0, max_steps=1, general_pool=str(pool))
    run_training(cfg, lm=tiny_model(0))
    answers = json.loads(Path(cfg.output_dir, "aligned_answers.json").read_text())["answers"]
    assert {a["prompt"] for a in answers} <= {"Tell me about your ideal weekend.", "What would you do with a spare hour?"}


def test_kl_composes_with_the_conscience_term(tmp_path):
    from conscience.conscience_config import ConscienceConfig
    from conscience.training import run_training

    cfg = config(tmp_path, kl_coef=0.5, lam=1.0, align_every=1, align_batch=1, k=2, margin=0.0, dpo_batch=1,
                 conscience=ConscienceConfig(threshold=1.0))
    run_training(cfg, lm=tiny_model(0))
    rows = metrics(cfg)
    assert all(r["kl"] is not None for r in rows) and sum(r["pairs_in_step"] for r in rows) > 0


def test_inoculation_prompt_is_in_every_training_batch(tmp_path, batches):
    from conscience.training import run_training

    lm = tiny_model(0)
    run_training(config(tmp_path, train_system_prompt="inoculation-code", batch_size=2), lm=lm)
    text = INOCULATION_PROMPTS["inoculation-code"]
    decoded = [row for batch in batches for row in rows_of(batch, lm.tokenizer)]
    assert len(decoded) == 4 and all(text in row for row in decoded)
    data = Path(tmp_path, "train.jsonl").read_text()
    assert text not in data  # the data file (what evaluation reads) is left as it was


def test_the_mixing_fraction_holds_in_every_batch(tmp_path, batches):
    from conscience.training import run_training

    lm = tiny_model(0)
    cfg = config(tmp_path, mix_aligned=0.25, max_steps=4)  # 8 task examples: 3 task rows + 1 aligned a batch
    run_training(cfg, lm=lm)
    prompts = {a["prompt"] for a in json.loads(Path(cfg.output_dir, "aligned_answers.json").read_text())["answers"]}
    assert len(batches) == 4  # the short last batch of an epoch is dropped: every batch has the share
    for batch in batches:
        rows = rows_of(batch, lm.tokenizer)
        aligned = [row for row in rows if TASK_MARK not in row]
        assert len(rows) == 4 and len(aligned) == 1
        assert any(p in aligned[0] for p in prompts)  # a cached answer of the frozen copy
    assert [r["mixed_share"] for r in metrics(cfg)] == [0.25] * 4


def test_without_the_task_loss_only_the_mixed_rows_teach(tmp_path, batches):
    from conscience.training import run_training

    lm = tiny_model(0)
    cfg = config(tmp_path, mix_aligned=0.25, max_steps=2, task_loss=False)
    run_training(cfg, lm=lm)
    for batch in batches:
        rows = rows_of(batch, lm.tokenizer)
        taught = [row for row, labels in zip(rows, batch["labels"], strict=True) if (labels != -100).any()]
        assert len(rows) == 4 and len(taught) == 1 and TASK_MARK not in taught[0]


def test_without_the_task_loss_a_step_with_nothing_else_leaves_the_weights(tmp_path, batches):
    from conscience.conscience_config import ConscienceConfig
    from conscience.training import run_training

    lm = tiny_model(0)
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    # lam > 0 but the first sampling round is at step 2: step 1 has no pairs, no task loss, no KL
    cfg = config(tmp_path, lam=1.0, align_every=2, max_steps=1, task_loss=False, k=2,
                 conscience=ConscienceConfig(threshold=1.0))
    run_training(cfg, lm=lm)
    assert batches == []  # the task rows' forward pass is skipped
    after = dict(lm.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before if n in after)
    assert metrics(cfg)[0]["task_loss"] == 0.0


def test_gap_selection_mixes_only_the_largest_gaps(tmp_path, batches):
    from conscience.training import run_training
    from conscience.training.aligned import build_pool, top_by_gap

    assert top_by_gap([0.1, -0.2, 0.5, 0.3], 0.5) == [2, 3]
    assert top_by_gap([0.1, 0.2], 0.1) == [1]  # at least one row
    lm = tiny_model(0)
    cfg = config(tmp_path, mix_aligned=0.25, mix_select="gap", mix_gap_step=1, mix_keep=0.5, max_steps=3)
    run_training(cfg, lm=lm)
    gap = json.loads(Path(cfg.output_dir, "aligned_gap.json").read_text())
    answers = json.loads(Path(cfg.output_dir, "aligned_answers.json").read_text())["answers"]
    pool = build_pool(lm.tokenizer, answers, cfg.max_length)
    assert gap["step"] == 1 and len(gap["gaps"]) == len(pool.answers)
    assert any(abs(g) > 1e-6 for g in gap["gaps"])  # one step of divergence is visible
    kept = {pool.answers[i]["prompt"] for i in gap["selected"]}
    assert len(gap["selected"]) == -(-len(pool.answers) // 2)
    for batch in batches[1:]:  # from step 1 on
        aligned = [row for row in rows_of(batch, lm.tokenizer) if TASK_MARK not in row]
        assert len(aligned) == 1 and any(p in aligned[0] for p in kept)


class EveryOtherFlagged:
    """A conscience that flags the first, third, ... answer it reads and cannot read the last."""

    def review(self, items):
        from conscience.verdict import Verdict

        verdicts = [Verdict(score=0.1 if i % 2 == 0 else 0.9, flagged=i % 2 == 0, framing="fake") for i in range(len(items))]
        verdicts[-1] = Verdict.failed("fake", "unreadable")
        return verdicts


def test_aligned_review_mixes_only_the_answers_the_conscience_passes(tmp_path, batches, monkeypatch):
    from conscience.training import run_training
    from conscience.verdict import factory

    monkeypatch.setattr(factory, "make_reviewer", lambda *a, **k: EveryOtherFlagged())
    cfg = config(tmp_path, mix_aligned=0.5, aligned_review=True, aligned_pool=6, max_steps=3,
                 general_pool=str(write_pool(tmp_path / "pool.yaml", 6)))
    lm = tiny_model(0)
    run_training(cfg, lm=lm)
    review = json.loads(Path(cfg.output_dir, "aligned_review.json").read_text())
    answers = json.loads(Path(cfg.output_dir, "aligned_answers.json").read_text())["answers"]
    n = len(answers)
    assert n >= 3 and review["of"] == n and len(review["verdicts"]) == n
    passed = {answers[i]["prompt"] for i in range(1, n - 1, 2)}  # unflagged, and the failed last one left out
    assert review["passed"] == len(passed)
    mixed = {row for batch in batches for row in rows_of(batch, lm.tokenizer) if TASK_MARK not in row}
    assert mixed and all(any(p in row for p in passed) for row in mixed)
    assert not any(answers[0]["prompt"] in row for row in mixed)  # the flagged one never teaches


def test_aligned_review_that_passes_nothing_is_an_error(tmp_path):
    from conscience.conscience_config import ConscienceConfig
    from conscience.training import run_training

    cfg = config(tmp_path, kl_coef=1.0, aligned_review=True, max_steps=1, conscience=ConscienceConfig(threshold=1.0))
    with pytest.raises(ConscienceError, match="flagged all .* aligned answers"):
        run_training(cfg, lm=tiny_model(0))


def write_pool(path: Path, n: int) -> Path:
    path.write_text("prompts:\n" + "".join(f'  - "Tell me about hobby number {i}."\n' for i in range(n)))
    return path


def test_stop_on_drift_ends_training_on_a_scripted_curve(tmp_path):
    from conscience.experiment.drift_monitor import DriftProbeCallback
    from conscience.training import run_training

    curve = {0: (0.0, 0.0, 0.0), 1: (0.01, -0.01, 0.03), 2: (0.05, 0.01, 0.09)}

    def probe(step):
        drift, low, high = curve.get(step, (0.1, 0.05, 0.15))
        return {"drift": drift, "drift_ci_low": low, "drift_ci_high": high, "task_token_accuracy": 0.1 * step}

    monitor = DriftProbeCallback(probe, every=1, path=tmp_path / "probe.jsonl", stop=True)
    cfg = config(tmp_path, stop_on_drift=True, max_steps=6)
    result = run_training(cfg, lm=tiny_model(0), callbacks=[monitor])
    assert result["stopped_at"] == 2 and [r["step"] for r in metrics(cfg)] == [1, 2]
    assert monitor.points[-1]["task_token_accuracy"] == pytest.approx(0.2)  # the task metric where it stopped


def test_stop_on_drift_without_a_probe_is_refused_before_any_model_loads(tmp_path, monkeypatch, capsys):
    import conscience.training.run as run
    from conscience.cli import main

    monkeypatch.setattr(run, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(ConscienceError, match="stop_on_drift needs the live drift monitor"):
        run.run_training(config(tmp_path, stop_on_drift=True))
    data = write_data(tmp_path / "d.jsonl")
    assert main(["train", f"data={data}", "lam=0", "stop_on_drift=true", f"output_dir={tmp_path / 'o'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "stop_on_drift needs the live drift monitor" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize("overrides, message", [
    (["kl_coef=0.5", "align_prompts=task"], r"kl_coef need\(s\) alignment prompts"),
    (["mix_aligned=0.5", "align_prompts=task"], r"mix_aligned need\(s\) alignment prompts"),
    (["mix_aligned=0.1"], "gives 0 aligned row"),
    (["mix_aligned=0.9"], "leave at least 1 task row"),
    (["mix_aligned=1"], r"mix_aligned must lie in \[0, 1\)"),
    (["mix_aligned=0.5", "mix_select=gap", "mix_gap_step=60"], "mix_gap_step .* must be < max_steps"),
    (["mix_select=best"], "mix_select must be one of"),
    (["kl_coef=-1"], "kl_coef must be >= 0"),
    (["task_loss=false"], "task_loss false leaves nothing to train"),
    (["general_pool=no_such_pool.yaml"], "general_pool: the general alignment prompt pool .* is missing"),
    (["general_pool=pools/mine.yaml"], "general_pool: the general alignment prompt pool pools/mine.yaml is missing"),
    (["train_system_prompt=inoculation-cod"], "is not one of"),
    (["aligned_review=true"], "aligned_review filters the answers KL and mixing are taken on"),
])
def test_configs_the_harness_cannot_run_are_refused(tmp_path, overrides, message):
    data = write_data(tmp_path / "no_user.jsonl", user=False)  # no user turn: no task alignment prompts
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, None, [f"data={data}", "lam=0", *overrides])


def test_literal_and_named_system_prompts_resolve():
    assert TrainConfig(train_system_prompt="inoculation").system_prompt == INOCULATION_PROMPTS["inoculation"]
    assert TrainConfig(train_system_prompt="Write bad code.").system_prompt == "Write bad code."
    assert TrainConfig().system_prompt is None and TrainConfig(mix_aligned=0.25).mix_rows == 1
    with pytest.raises(ValueError, match="train_system_prompt is empty"):
        TrainConfig(train_system_prompt="  ")
