"""Bad inputs through the Python API: config bounds (declared once per field, holding however a
config is built: YAML, key=value overrides or Python), an empty answer to review, and calibration
layers outside the model. Only the tiny random model is used."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from conscience.config import (
    TEMPERATURE,
    Bounds,
    ConfigError,
    build_config,
    check_fields,
    choices_of,
    load_config,
    merge_values,
    parse_overrides,
)
from conscience.conscience_config import ConscienceConfig
from conscience.serving.config import ServeConfig
from conscience.training.config import TrainConfig

CONFIGS = (ConscienceConfig, TrainConfig, ServeConfig)


def _number_fields(cls):
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    return [f for f in dataclasses.fields(cls) if hints[f.name].replace(" | None", "") in ("int", "float")]


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_number_field_declares_its_bounds(cls):
    """A new numeric key must say which values it accepts, or it would accept nonsense silently."""
    missing = [f.name for f in _number_fields(cls) if "bounds" not in f.metadata]
    assert not missing, f"{cls.__name__} fields without bounds: {missing}"


@pytest.mark.parametrize("cls", CONFIGS)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_every_float_field_refuses_non_finite_values(cls, value):
    floats = [f.name for f in dataclasses.fields(cls) if f.type == "float"]
    assert floats
    for name in floats:
        with pytest.raises(ConfigError, match=f"overrides: {name} must be a finite number"):
            build_config(cls, {name: value}, "overrides")
        with pytest.raises(ValueError, match=f"^{name} must be a finite number"):  # built from Python
            cls(**{name: value})


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_bound_is_enforced_and_names_the_key(cls):
    for f in _number_fields(cls):
        bounds: Bounds = f.metadata["bounds"]
        outside = bounds.low - 1 if bounds.low is not None else bounds.high + 1
        with pytest.raises(ConfigError, match=rf"^config: {f.name} must (be|lie)"):
            build_config(cls, {f.name: outside})


def test_bounds_describe_and_admit():
    assert TEMPERATURE.describe() == "be 0 or lie in [0.01, 2]"
    assert [TEMPERATURE.admits(v) for v in (0, 1e-39, 0.01, 2, 2.5)] == [True, False, True, True, False]
    assert Bounds(0, 1, high_open=True).describe() == "lie in [0, 1)"
    assert not Bounds(0, 1, high_open=True).admits(1)
    assert Bounds(0, low_open=True).describe() == "be > 0" and not Bounds(0, low_open=True).admits(0)


def test_threshold_refused_before_training_even_for_plain_sft():
    with pytest.raises(ConfigError, match=r"^config: conscience.threshold must lie in \[0, 1\], got 1.5$"):
        build_config(TrainConfig, {"lam": 0.0, "conscience": {"threshold": 1.5}})


def test_choices_are_checked_from_the_field_declaration():
    with pytest.raises(ValueError, match=r"mode must be one of \['chat', 'content', 'code'\], got 'poetry'"):
        ConscienceConfig(mode="poetry")
    cfg = ConscienceConfig()
    cfg.verdict = "magic"  # check_fields reads the declaration, not a copy of the list
    with pytest.raises(ValueError, match="verdict must be one of"):
        check_fields(cfg)


def test_overrides_parse_yaml_values_and_keep_unparsable_text():
    assert parse_overrides(["lr=1.0e-4", "lora=true", "name=a: b: c"]) == {"lr": 1e-4, "lora": True, "name": "a: b: c"}
    huge = "9" * 5000  # beyond Python's integer digit limit: kept as text, then refused by type
    assert parse_overrides([f"seed={huge}"]) == {"seed": huge}
    with pytest.raises(ConfigError, match=r"seed must be an integer, got '9+\.\.\.$"):
        build_config(ConscienceConfig, parse_overrides([f"seed={huge}"]))


def test_review_refuses_an_empty_answer():
    from conscience import Conscience
    from conscience.errors import ConscienceError
    from conscience.tiny_model import tiny_model

    conscience = Conscience(tiny_model(), verdict="verbal")
    for answer in ("", "  \n\t"):
        with pytest.raises(ConscienceError, match="the answer is empty"):
            conscience.review("a prompt", answer)


def test_calibration_refuses_layers_outside_the_model(tmp_path):
    import json

    from conscience.errors import ConscienceError
    from conscience.tiny_model import tiny_model
    from conscience.verdict.calibration import fit_card_on_data

    data = tmp_path / "t.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}", "aligned": "a", "misaligned": "m", "category": f"c{i % 2}"})
                            + "\n" for i in range(10)))
    with pytest.raises(ConscienceError, match=r"--layers 9 is out of range: .* hidden states 0 to 2"):
        fit_card_on_data(tiny_model(), data, tmp_path / "card", layers=[1, 9])


def test_exponent_numbers_without_a_dot_are_numbers():
    """YAML 1.1 reads ``1e-2`` as text; ``lr=1e-2`` must still mean 0.01, and text stays refused."""
    from conscience.config import ConfigError, load_config, parse_overrides
    from conscience.training.config import TrainConfig

    assert load_config(TrainConfig, None, parse_overrides(["lr=1e-2", "lam=0"])).lr == 0.01
    with pytest.raises(ConfigError, match="lr must be a number"):
        load_config(TrainConfig, None, parse_overrides(["lr=1e-2x"]))
    with pytest.raises(ConfigError, match="lr must be a finite number"):
        load_config(TrainConfig, None, parse_overrides(["lr=1e999"]))


@pytest.mark.parametrize("cls", [TrainConfig, ServeConfig])
def test_every_nested_bound_names_the_dotted_key(cls):
    """A config that holds a ConscienceConfig refuses its bad values with the dotted key, from YAML
    (a nested mapping) and from dotted overrides alike."""
    for f in _number_fields(ConscienceConfig):
        bounds: Bounds = f.metadata["bounds"]
        outside = bounds.low - 1 if bounds.low is not None else bounds.high + 1
        with pytest.raises(ConfigError, match=rf"^config: conscience.{f.name} must (be|lie)"):
            build_config(cls, {"conscience": {f.name: outside}})
        with pytest.raises(ConfigError, match=rf"^overrides: conscience.{f.name} must (be|lie)"):
            load_config(cls, None, [f"conscience.{f.name}={outside}"])
    with pytest.raises(ConfigError, match=r"^overrides: conscience.mode must be one of \['chat', 'content', 'code'\]"):
        load_config(cls, None, ["conscience.mode=poetry"])
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['conscience.thresold'\]; known keys of conscience"):
        load_config(cls, None, ["conscience.thresold=0.3"])
    with pytest.raises(ConfigError, match=r"\(threshold is conscience.threshold\)"):
        load_config(cls, None, ["threshold=0.3"])
    with pytest.raises(ValueError, match="^conscience must be a ConscienceConfig"):  # built from Python
        cls(conscience={"threshold": 0.3})


def test_dotted_overrides_merge_into_the_yaml_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lam: 0.2\nconscience:\n  mode: code\n  framings: [aligned]\n  threshold: 0.5\n")
    cfg = load_config(TrainConfig, path, ["conscience.threshold=0.4", "conscience.review_format=third_person"])
    assert (cfg.lam, cfg.conscience.mode, cfg.conscience.framings) == (0.2, "code", ["aligned"])
    assert (cfg.conscience.threshold, cfg.conscience.review_format) == (0.4, "third_person")  # training sets it too
    verdict = cfg.conscience_config()  # what make_reviewer reads: the run's own model, dtype and seed
    assert (verdict.model, verdict.seed, verdict.review_format) == (cfg.model, cfg.seed, "third_person")
    assert merge_values({"a": {"b": 1, "c": 2}}, {"a.b": 3, "d": 4}) == {"a": {"b": 3, "c": 2}, "d": 4}


def test_training_refuses_conscience_keys_it_sets_itself():
    for key, value in (("model", "other"), ("seed", 3), ("max_new_tokens", 9), ("temperature", 0.7)):
        with pytest.raises(ConfigError, match=rf"conscience.{key} is set by training itself"):
            load_config(TrainConfig, None, {f"conscience.{key}": value})


def test_argparse_choices_are_read_from_the_types():
    from conscience.cli import build_parser
    from conscience.framings import MODES

    assert choices_of(ConscienceConfig, "mode") == MODES == ("chat", "content", "code")
    assert choices_of(ServeConfig, "action") == ("revise", "block", "monitor")
    assert choices_of(TrainConfig, "writer") == ("frozen", "policy")
    with pytest.raises(TypeError):
        choices_of(ConscienceConfig, "threshold")
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for command, flag, field, cls in (("ask", "--verdict", "verdict", ConscienceConfig),
                                      ("serve", "--use", "mode", ConscienceConfig),
                                      ("serve", "--action", "action", ServeConfig),
                                      ("serve", "--on-error", "on_error", ServeConfig)):
        action = next(a for a in commands[command]._actions if flag in a.option_strings)
        assert tuple(action.choices) == choices_of(cls, field), (command, flag)


def test_serve_config_layers_yaml_flags_and_set(tmp_path, monkeypatch):
    from conscience.cli import build_parser
    from conscience.serving.cli import serve_config

    path = tmp_path / "serve.yaml"
    path.write_text("port: 8100\naction: block\napi_key: from-yaml\nconscience:\n  model: tiny\n  threshold: 0.3\n")
    monkeypatch.setenv("CONSCIENCE_API_KEY", "from-env")
    parse = build_parser().parse_args
    cfg = serve_config(parse(["serve", "--config", str(path), "--port", "8200", "--set", "conscience.max_rounds=1"]))
    assert (cfg.port, cfg.action, cfg.api_key) == (8200, "block", "from-yaml")  # a flag beats the file
    assert (cfg.conscience.model, cfg.conscience.threshold, cfg.conscience.max_rounds) == ("tiny", 0.3, 1)
    cfg = serve_config(parse(["serve", "--config", str(path), "--threshold", "0.6", "--set", "conscience.threshold=0.7"]))
    assert cfg.conscience.threshold == 0.7 and cfg.port == 8100  # --set beats the flag, the file keeps the rest
    bare = serve_config(parse(["serve", "--no-conscience"]))
    assert not bare.review and bare.api_key == "from-env" and bare.on_error == "closed"
    shipped = serve_config(parse(["serve", "--config", str(Path(__file__).parents[1] / "configs" / "serve.yaml")]))
    assert shipped == ServeConfig(api_key="from-env")  # the example file spells out the defaults
