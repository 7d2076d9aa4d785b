"""Shared plumbing: adapters and the base identity, the ``tiny`` spec, atomic writes, the log helper."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conscience.errors import ModelSpecError
from conscience.jsonl import atomic_file, atomic_folder, write_json_atomic, write_text_atomic
from conscience.log import log, warn
from conscience.models import base_identity, is_adapter, load_model, load_weights, with_adapter
from conscience.tiny_model import tiny_model


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    from peft import LoraConfig, get_peft_model

    out = tmp_path_factory.mktemp("adapter")
    model = get_peft_model(tiny_model(0).model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    model.save_pretrained(out)
    return out


def test_the_tiny_spec_loads_like_any_model():
    lm = load_model("tiny:2")
    assert (lm.spec, lm.identity) == ("tiny:2", "tiny-random-llama:2")
    assert lm.tokenizer.padding_side == "left" and not lm.model.training
    with pytest.raises(ModelSpecError, match="tiny:SEED"):
        load_model("tiny:x")


def test_with_adapter_keeps_the_identity_format_and_base_identity_strips_it(adapter_dir):
    lm = with_adapter(tiny_model(0), str(adapter_dir))
    assert lm.identity == f"tiny-random-llama:0+adapter:{adapter_dir.resolve()}"  # as cards and runs record it
    assert hasattr(lm.model, "peft_config") and not lm.model.training
    assert base_identity(lm.identity) == "tiny-random-llama:0"
    assert base_identity("tiny-random-llama:0") == "tiny-random-llama:0"
    assert load_model("tiny", adapter=str(adapter_dir)).identity == lm.identity
    assert with_adapter("tiny", adapter_dir).identity == lm.identity
    plain = tiny_model(0)
    assert with_adapter(plain, None) is plain


def test_adapters_are_checked_and_full_weights_load_alone(adapter_dir, tmp_path):
    assert is_adapter(adapter_dir) and not is_adapter(tmp_path)
    with pytest.raises(ModelSpecError, match="adapter_config.json"):
        with_adapter(tiny_model(0), tmp_path)
    full = tmp_path / "full"
    lm = tiny_model(1)
    lm.model.save_pretrained(full)
    lm.tokenizer.save_pretrained(full)
    assert load_weights("tiny", str(full)).identity == f"path:{full.resolve()}"
    assert load_weights("tiny", None).identity == "tiny-random-llama:0"
    assert load_weights("tiny", str(adapter_dir)).identity.endswith(f"+adapter:{adapter_dir.resolve()}")


def test_serve_loads_the_tiny_spec_with_its_adapter_like_any_model(adapter_dir, tmp_path):
    """``serve --model tiny --adapter DIR`` and the learner's loader go through load_model/with_adapter."""
    pytest.importorskip("fastapi")
    from conscience.conscience_config import ConscienceConfig
    from conscience.serving.backends import build_backend
    from conscience.serving.config import ServeConfig
    from conscience.serving.learn import build_learner

    serve = ServeConfig(learn=True, learn_dir=str(tmp_path))
    cfg = ConscienceConfig(model="tiny:1", adapter=str(adapter_dir), verdict="verbal", max_new_tokens=4)
    backend = build_backend(serve, cfg)
    assert backend.lm.identity == f"tiny-random-llama:1+adapter:{adapter_dir.resolve()}"
    assert hasattr(backend.lm.model, "peft_config") and backend.name == "tiny:1"
    load = build_learner(serve, cfg, backend).load
    assert load(None).identity == "tiny-random-llama:1"
    assert load(str(adapter_dir)).identity == backend.lm.identity


def test_atomic_writes_leave_the_old_file_on_failure(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_json_atomic(path, {"a": "é"})
    assert path.read_text(encoding="utf-8") == '{\n  "a": "é"\n}'
    with pytest.raises(RuntimeError):
        with atomic_file(path) as fh:
            fh.write("half")
            raise RuntimeError("interrupted")
    assert json.loads(path.read_text(encoding="utf-8")) == {"a": "é"}
    write_text_atomic(path, "new\n")
    assert path.read_text(encoding="utf-8") == "new\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]  # no temporary file left


def test_atomic_folder_swaps_or_keeps(tmp_path):
    out = tmp_path / "model"
    with atomic_folder(out) as tmp:
        (tmp / "w").write_text("1")
    with atomic_folder(out) as tmp:
        (tmp / "w").write_text("2")
    assert (out / "w").read_text() == "2"
    with atomic_folder(out, keep_existing=True) as tmp:
        (tmp / "w").write_text("3")
    assert (out / "w").read_text() == "2"
    with pytest.raises(RuntimeError), atomic_folder(out) as tmp:
        (tmp / "w").write_text("4")
        raise RuntimeError("interrupted")
    assert (out / "w").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_log_lines(capsys):
    log("loaded")
    warn("cut")
    assert capsys.readouterr().err == "[conscience] loaded\n[conscience] warning: cut\n"
