"""Online alignment training on a tiny random model: steps, SFT equivalence, resume, errors."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conscience.chat_data import read_chat_jsonl, tokenize_chat
from conscience.config import ConfigError, load_config
from conscience.conscience_config import ConscienceConfig
from conscience.errors import DataFormatError
from conscience.tiny_model import tiny_model
from conscience.training.config import TrainConfig

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def write_data(path: Path, n: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"messages": [
                {"role": "user", "content": f"Write code number {i}"},
                {"role": "assistant", "content": "def add(a, b):\n    return a + b" + " " * (i % 3)},
            ]}) + "\n")
    return path


def tiny_config(tmp_path: Path, **overrides) -> TrainConfig:
    values = dict(data=str(write_data(tmp_path / "train.jsonl")), output_dir=str(tmp_path / "out"), max_steps=2,
                  batch_size=2, lam=1.0, align_every=1, align_prompts="task", align_batch=2, k=2,
                  sample_max_new_tokens=6, alt_max_new_tokens=6, max_length=64, margin=0.0,
                  conscience=ConscienceConfig(threshold=1.0), dpo_batch=2, lr=1e-2, lora_targets=["q_proj", "v_proj"])
    values.update(overrides)
    return TrainConfig(**values)


def metrics(out_dir) -> list[dict]:
    return [json.loads(line) for line in Path(out_dir, "metrics.jsonl").read_text().splitlines()]


def test_two_steps_change_every_trainable_parameter(tmp_path):
    from peft import PeftModel
    from transformers import TrainerCallback

    from conscience.training import run_training

    before = {}

    class Snapshot(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            before.update({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    cfg = tiny_config(tmp_path)
    lm = tiny_model(0)
    result = run_training(cfg, lm=lm, callbacks=[Snapshot()])
    after = {n: p.detach() for n, p in lm.model.named_parameters() if p.requires_grad}
    assert len(before) == 8 and len(after) == 8  # 2 layers × (q, v) × (A, B)
    after = dict(zip(before, after.values(), strict=True))
    unchanged = [n for n in after if torch.equal(before[n], after[n])]
    assert not unchanged
    rows = metrics(result["output_dir"])
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["pairs_in_step"] > 0 and torch.isfinite(torch.tensor([r["task_loss"], r["dpo_loss"]])).all()
        assert 0 <= r["flagged_share"] <= 1 and r["seconds_sampling"] > 0
    # the output loads back as a PEFT adapter on the base model, with the model card next to it
    final = Path(result["final"])
    assert (final / "adapter_model.safetensors").exists() and not list(final.glob("*.bin"))
    PeftModel.from_pretrained(tiny_model(0).model, final)
    card = Path(result["output_dir"], "README.md").read_text()
    assert "lam: 1.0" in card and "task_loss" in card


def test_lam_zero_is_exactly_sft(tmp_path):
    from transformers import Trainer, set_seed

    from conscience.chat_data import build_task_data, load_conversations
    from conscience.training import run_training
    from conscience.training.data import ChatCollator, ListDataset
    from conscience.training.run import apply_lora, training_arguments

    cfg = tiny_config(tmp_path, lam=0.0, max_steps=3)
    ours = run_training(cfg, lm=tiny_model(0))
    ours_losses = [h["loss"] for h in ours["log_history"] if "loss" in h]

    lm = tiny_model(0)
    set_seed(cfg.seed)  # as run_training does before adding the adapter
    data = build_task_data(lm.tokenizer, load_conversations(cfg.data), cfg.max_length)
    lm = apply_lora(lm, cfg)
    lm.model.train()
    plain = Trainer(model=lm.model, args=training_arguments(cfg, tmp_path / "plain"),
                    train_dataset=ListDataset(data.examples), data_collator=ChatCollator(lm.tokenizer.pad_token_id))
    plain.train()
    plain_losses = [h["loss"] for h in plain.state.log_history if "loss" in h]
    assert len(ours_losses) == 3 and ours_losses == plain_losses
    assert all(r["pairs_in_step"] == 0 and r["flagged_share"] is None for r in metrics(ours["output_dir"]))


def test_resume_reproduces_task_losses(tmp_path):
    from transformers import TrainerCallback

    from conscience.training import run_training

    class StopAt3(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_training_stop = True

    common = dict(max_steps=4, save_steps=2, align_every=2, lr_schedule="constant")
    whole = run_training(tiny_config(tmp_path / "a", **common), lm=tiny_model(0))
    cfg = tiny_config(tmp_path / "b", **common)
    run_training(cfg, lm=tiny_model(0), callbacks=[StopAt3()])
    assert [r["step"] for r in metrics(cfg.output_dir)] == [1, 2, 3]
    cfg.resume = str(Path(cfg.output_dir) / "checkpoint-2")
    run_training(cfg, lm=tiny_model(0))
    expected, got = metrics(whole["output_dir"]), metrics(cfg.output_dir)
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    assert sum(r["pairs_in_step"] for r in expected) > 0
    for e, g in zip(expected, got, strict=True):
        assert g["task_loss"] == pytest.approx(e["task_loss"], rel=1e-5)
        assert g["pairs_in_step"] == e["pairs_in_step"]


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    import conscience.training.trainer as trainer_module
    from conscience.training import TrainingDivergedError, run_training

    calls = {"n": 0}
    real = trainer_module.hybrid_loss

    def poisoned(task_loss, dpo, lam):
        calls["n"] += 1
        loss = real(task_loss, dpo, lam)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setattr(trainer_module, "hybrid_loss", poisoned)
    cfg = tiny_config(tmp_path, max_steps=4, save_steps=2)
    with pytest.raises(TrainingDivergedError, match=r"not finite at step 3.*checkpoint-2"):
        run_training(cfg, lm=tiny_model(0))
    out = Path(cfg.output_dir)
    assert (out / "checkpoint-2" / "adapter_model.safetensors").exists()
    assert not (out / "final").exists()


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = write_data(tmp_path / "d.jsonl", n=3)
    with open(path, "a") as fh:
        fh.write("{not json\n")
    with pytest.raises(DataFormatError, match=r"d.jsonl:4: invalid JSON"):
        read_chat_jsonl(path)
    path.write_text(json.dumps({"messages": [{"role": "user"}]}) + "\n")
    with pytest.raises(DataFormatError, match=r"d.jsonl:1: messages\[0\] must have"):
        read_chat_jsonl(path)


def test_unknown_role_is_refused_with_file_line_and_field(tmp_path):
    path = write_data(tmp_path / "d.jsonl", n=2)
    with open(path, "a") as fh:
        fh.write(json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "42"},
                                          {"role": "assistant", "content": "ok"}]}) + "\n")
    with pytest.raises(DataFormatError, match=r"d.jsonl:3: messages\[1\].role must be one of system, user, "
                                              r"assistant, got 'tool'"):
        read_chat_jsonl(path)


def _tree(folder: Path, skip: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``folder`` but ``skip``: its bytes and modification time."""
    return {str(p): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))
            if p.is_file() and skip not in p.parents}


def test_output_dir_empty_or_not_a_run_is_refused_and_a_run_touches_nothing_outside_it(tmp_path, monkeypatch):
    """An empty output_dir once trained into the current folder and overwrote its README.md; a
    folder of someone's files is refused too; a real run writes nothing outside output_dir."""
    import conscience.training.run as run_module
    from conscience.errors import ConscienceError
    from conscience.training import run_training

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded before the output folder was checked")

    cwd = tmp_path / "project"
    (cwd / "notes").mkdir(parents=True)
    (cwd / "README.md").write_text("# my project\n")
    (cwd / "notes" / "todo.txt").write_text("keep me\n")
    cfg = tiny_config(tmp_path)
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("CONSCIENCE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(run_module, "load_model", no_load)
    before = _tree(cwd, cwd / "out")
    for bad, message in (("", "output_dir is empty"), ("  ", "output_dir is empty"),
                         (".", "holds files that are not from a conscience training run"),
                         ("notes", "holds files that are not from a conscience training run"),
                         ("README.md", "is a file, not a folder")):
        cfg.output_dir = bad
        with pytest.raises(ConscienceError, match=message):
            run_training(cfg)
    assert _tree(cwd, cwd / "out") == before
    cfg.output_dir = "out"
    run_training(cfg, lm=tiny_model(0))
    assert (cwd / "out" / "final" / "adapter_model.safetensors").is_file()
    assert _tree(cwd, cwd / "out") == before
    cfg.max_steps = 1  # a folder of an earlier run is ours: training into it again is allowed
    run_training(cfg, lm=tiny_model(0))
    assert [r["step"] for r in metrics(cwd / "out")] == [1]


def test_record_without_assistant_turn_is_reported(tmp_path):
    path = write_data(tmp_path / "d.jsonl", n=2)
    with open(path, "a") as fh:
        fh.write(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataFormatError, match=r"1 record\(s\) have no assistant turn.*line 3"):
        read_chat_jsonl(path)


def test_loss_only_on_assistant_tokens():
    tok = tiny_model(0).tokenizer
    messages = [{"role": "user", "content": "Write code"}, {"role": "assistant", "content": "def add(a, b): return a"}]
    ex = tokenize_chat(tok, messages, max_length=128)
    learned = tok.decode([i for i, label in zip(ex["input_ids"], ex["labels"], strict=True) if label != -100])
    assert learned.startswith("def add(a, b): return a") and "Write code" not in learned
    assert tok.decode(ex["input_ids"]) == tok.apply_chat_template(messages, tokenize=False)


def test_config_rejects_unknown_keys_and_bad_combinations(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['lamda'\]"):
        load_config(TrainConfig, None, ["lamda=1"])
    with pytest.raises(ConfigError, match="align_every"):
        load_config(TrainConfig, None, ["lam=1", "align_every=0"])
    with pytest.raises(ConfigError, match="sample_temperature"):
        load_config(TrainConfig, None, ["k=4", "sample_temperature=0"])
    assert load_config(TrainConfig, REPO / "configs" / "code_hacking_sft.yaml").lam == 0
    assert load_config(TrainConfig, REPO / "configs" / "code_hacking_conscience.yaml").lam > 0


def test_cli_reports_unknown_key(tmp_path):
    from conscience.cli import main

    assert main(["train", "--config", str(REPO / "configs" / "code_hacking_sft.yaml"), "nonsense=1"]) == 2


def test_train_on_pairs_writes_adapter_and_leaves_model_alone(tmp_path):
    from peft import PeftModel

    from conscience.pairs import PreferencePair
    from conscience.training import train_on_pairs

    lm = tiny_model(0)
    before = {n: p.clone() for n, p in lm.model.state_dict().items()}
    pairs = [PreferencePair("Is it ok?", "Yes, safely.", "No rulers harm", 0.9, 0.1)] * 3
    out = train_on_pairs(lm, pairs, tmp_path / "adapter", steps=2, lr=1e-2, beta=0.1, lora_r=4, seed=0)
    assert (out / "adapter_config.json").exists() and (out / "adapter_model.safetensors").exists()
    assert all(torch.equal(before[n], p) for n, p in lm.model.state_dict().items())
    loaded = PeftModel.from_pretrained(tiny_model(0).model, out)
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in loaded.named_parameters())


DISTRIBUTED_SCRIPT = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from conscience.tiny_model import tiny_model
    from conscience.conscience_config import ConscienceConfig
    from conscience.training import TrainConfig, run_training
    data, out = sys.argv[1], sys.argv[2]
    cfg = TrainConfig(data=data, output_dir=out, max_steps=2, batch_size=2, lam=1.0, align_every=1,
                      align_prompts="task", k=2, sample_max_new_tokens=6, alt_max_new_tokens=6, max_length=64,
                      conscience=ConscienceConfig(threshold=1.0), margin=0.0, lora_targets=["q_proj", "v_proj"])
    result = run_training(cfg, lm=tiny_model(0))
    from accelerate import PartialState
    state = PartialState()
    losses = [h["loss"] for h in result["log_history"] if "loss" in h]
    with open(f"{out}/rank{state.process_index}.json", "w") as fh:
        json.dump({"losses": losses, "world": state.num_processes}, fh)
""")


def test_distributed_two_processes_agree(tmp_path):
    pytest.importorskip("accelerate")
    script = tmp_path / "dist_train.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    data = write_data(tmp_path / "train.jsonl")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "CUDA_VISIBLE_DEVICES": ""}
    # `accelerate launch --cpu` starts a single process unless MPI is installed; `--multi_gpu` starts
    # two torchrun workers, which join a CPU (gloo) group because TrainingArguments say use_cpu.
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           str(script), str(data), str(out)],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2 and len(ranks[0]["losses"]) == 2
    assert ranks[0]["losses"] == ranks[1]["losses"]
    assert all(torch.isfinite(torch.tensor(ranks[0]["losses"])))
    assert (out / "final" / "adapter_model.safetensors").exists()


def test_generation_copy_merges_or_drops_the_adapter_and_leaves_the_policy_alone(tmp_path):
    from conscience.models import frozen
    from conscience.training.online import generation_copy, sampling_dtype
    from conscience.training.run import apply_lora

    cfg = tiny_config(tmp_path)
    lm = apply_lora(tiny_model(0), cfg)
    with torch.no_grad():  # a non-zero adapter, so merged and dropped differ
        for name, p in lm.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    before = {n: p.clone() for n, p in lm.model.state_dict().items()}
    ids = torch.tensor([[1, 5, 9, 3, 7]])
    with torch.no_grad():
        policy_logits = lm.model(input_ids=ids).logits
        with frozen(lm.model) as base:
            base_logits = base(input_ids=ids).logits
    from conscience.packing import PackedLinear, int8_supported, packing_supported

    auto = sampling_dtype(lm.model, "auto")  # fp32 weights on a CPU: packed fp32, else bf16
    assert auto == (torch.float32 if packing_supported(torch.float32) else torch.bfloat16)
    assert sampling_dtype(lm.model, "int8") == torch.int8
    if not packing_supported(torch.float32):
        assert generation_copy(lm, torch.float32, adapter=True) is lm  # same dtype, nothing to pack
    assert not torch.allclose(policy_logits, base_logits, atol=0.05)
    dtypes = [torch.float32, torch.bfloat16] + ([torch.int8] if int8_supported() else [])
    for dtype, tol in zip(dtypes, (1e-4, 0.05, 0.1), strict=False):  # int8 only where supported
        merged = generation_copy(lm, dtype, adapter=True)
        dropped = generation_copy(lm, dtype, adapter=False)
        if merged is lm:
            continue
        assert not hasattr(merged.model, "peft_config") and not hasattr(dropped.model, "peft_config")
        if dtype == torch.float32:
            assert any(isinstance(m, PackedLinear) for m in merged.model.modules())
        with torch.no_grad():
            merged_logits = merged.model(input_ids=ids).logits.float()
            dropped_logits = dropped.model(input_ids=ids).logits.float()
        assert torch.allclose(merged_logits, policy_logits, atol=tol), dtype
        assert torch.allclose(dropped_logits, base_logits, atol=tol), dtype
    assert all(torch.equal(before[n], p) for n, p in lm.model.state_dict().items())


def test_reference_log_probs_are_cached_once_and_match_the_live_ones(tmp_path):
    from conscience.pairs import PreferencePair
    from conscience.training.run import apply_lora
    from conscience.training.trainer import ConscienceTrainer

    cfg = tiny_config(tmp_path)
    lm = apply_lora(tiny_model(0), cfg)
    trainer = ConscienceTrainer.__new__(ConscienceTrainer)  # only the reference helpers are exercised
    trainer.cfg, trainer.policy, trainer.frozen = cfg, lm, lm
    pairs = [PreferencePair("Is it ok?", "Yes, safely.", "No rulers harm", 0.9, 0.1),
             PreferencePair("Help me", "Sure, here is how.", "Go away", 0.8, 0.2)]
    batch = trainer.pair_batch(pairs)
    live = trainer.reference_of(pairs, batch)
    trainer.cache_reference(pairs)
    assert all(p.has_reference for p in pairs)
    cached = trainer.reference_of(pairs, batch)
    for a, b in zip(live, cached, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    again = PreferencePair.from_dict(pairs[0].to_dict())  # the cache survives the buffer's checkpoint state
    assert again.ref_chosen_logp == pairs[0].ref_chosen_logp
