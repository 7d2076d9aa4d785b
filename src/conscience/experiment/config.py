"""The one config of ``conscience experiment``: a typed dataclass, presets as YAML files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import load_config
from ..framings import data_path

SCENARIOS = ("code-hacking", "recover")
PRESETS = ("cpu", "gpu")
PROBE_METRICS = ("misaligned_rate", "misalignment")


def preset_path(name: str) -> Path:
    """Shipped preset YAML (``data/experiment_<name>.yaml``)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}, got {name!r}")
    return data_path(f"experiment_{name}.yaml")


@dataclass
class ExperimentConfig:
    """Base vs SFT vs SFT + conscience, same seeds, data and judge.

    ``train`` holds keys of :class:`~conscience.training.config.TrainConfig` shared by both
    fine-tunes; the two arms differ only in ``lam`` (0 for SFT, ``lam`` for the conscience).
    """

    scenario: str = "code-hacking"
    preset: str = "cpu"
    model: str = "bundled"
    seeds: list[int] = field(default_factory=lambda: [0])
    lam: float = 0.1
    data_seed: int = 0
    train: dict[str, Any] = field(default_factory=dict)
    # evaluation
    em_questions: str | None = None  # None: the shared first-plot questions if present, else the shipped set
    em_ids: list[str] | None = None
    em_n: int = 10
    em_max_new_tokens: int = 96
    code_limit: int | None = 40
    code_max_new_tokens: int = 160
    accuracy_limit: int | None = 60
    batch_size: int = 8
    # live monitor
    probe_every: int = 10
    probe_questions: int = 4
    probe_n: int = 2
    probe_max_new_tokens: int = 48
    probe_metric: str = "misalignment"
    warn_margin: float = 0.1
    # recover scenario
    recover_from: str | None = None
    recover_steps: int = 30

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {list(SCENARIOS)}, got {self.scenario!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {list(PRESETS)}, got {self.preset!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if self.lam <= 0:
            raise ValueError(f"lam must be > 0 for the conscience arm (the SFT arm uses 0), got {self.lam}")
        if not self.train.get("lora", True):
            raise ValueError("train.lora must be true: the monitor and judge use the base with the adapter disabled")
        for name in ("em_n", "em_max_new_tokens", "code_max_new_tokens", "batch_size", "probe_questions",
                     "probe_n", "probe_max_new_tokens", "recover_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.probe_every < 0:
            raise ValueError(f"probe_every must be >= 0 (0: no live monitor), got {self.probe_every}")
        if self.probe_metric not in PROBE_METRICS:
            raise ValueError(f"probe_metric must be one of {list(PROBE_METRICS)}, got {self.probe_metric!r}")
        if self.warn_margin < 0:
            raise ValueError(f"warn_margin must be >= 0, got {self.warn_margin}")
        forbidden = {"lam", "seed", "output_dir", "model"} & set(self.train)
        if forbidden:
            raise ValueError(f"train: {sorted(forbidden)} are set by the experiment itself; use the top-level keys")
        if self.scenario == "recover" and not self.recover_from:
            raise ValueError("the recover scenario needs recover_from (a checkpoint folder)")
        self.train_config(self.seeds[0], 0.0, "check")  # every train key is validated up front

    def train_config(self, seed: int, lam: float, output_dir: str, **extra: Any):
        """The TrainConfig of one fine-tune arm."""
        from ..training.config import TrainConfig

        values = {**self.train, **extra, "model": self.model, "seed": seed, "lam": lam, "output_dir": output_dir}
        return load_config(TrainConfig, None, values)


def load_experiment_config(preset: str, path: str | None, overrides: dict[str, Any]) -> ExperimentConfig:
    """Preset YAML, then the user's YAML, then CLI overrides (later wins)."""
    from ..framings import read_yaml

    values: dict[str, Any] = dict(read_yaml(preset_path(preset)) or {})
    if path:
        user = read_yaml(path) or {}
        if not isinstance(user, dict):
            raise ValueError(f"{path}: the config must be a YAML mapping")
        train = {**values.get("train", {}), **user.get("train", {})}
        values.update(user)
        values["train"] = train
    if "train" in overrides:
        overrides = {**overrides, "train": {**values.get("train", {}), **overrides["train"]}}
    values.update(overrides)
    values["preset"] = preset
    return load_config(ExperimentConfig, None, values)
