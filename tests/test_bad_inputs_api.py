"""Bad inputs through the Python API: config bounds (declared once per field, holding however a
config is built: YAML, key=value overrides or Python), an empty answer to review, and calibration
layers outside the model. Only the tiny random model is used."""

from __future__ import annotations

import dataclasses
import math

import pytest

from conscience.config import (
    TEMPERATURE,
    Bounds,
    ConfigError,
    ConscienceConfig,
    build_config,
    check_fields,
    parse_overrides,
)
from conscience.training.config import TrainConfig

CONFIGS = (ConscienceConfig, TrainConfig)


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
    with pytest.raises(ConfigError, match=r"threshold must lie in \[0, 1\], got 1.5"):
        build_config(TrainConfig, {"lam": 0.0, "threshold": 1.5})


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
    from conscience.testing import tiny_model

    conscience = Conscience(tiny_model(), verdict="verbal")
    for answer in ("", "  \n\t"):
        with pytest.raises(ConscienceError, match="the answer is empty"):
            conscience.review("a prompt", answer)


def test_calibration_refuses_layers_outside_the_model(tmp_path):
    import json

    from conscience.errors import ConscienceError
    from conscience.testing import tiny_model
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
