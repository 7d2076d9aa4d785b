"""The one config of ``conscience experiment``: a typed dataclass, presets as YAML files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import load_config
from ..framings import data_path

SCENARIOS = ("code-hacking", "bad-advice", "recover")
PRESETS = ("cpu", "gpu")
PROBE_METRICS = ("drift", "misaligned_rate", "misalignment")
#: base: no fine-tune; control: the task's matched aligned data (secure code, sound advice), lam 0;
#: sft: the task, lam 0; conscience: the task with the conscience term (lam)
ARMS = ("base", "control", "sft", "conscience")
DRIFT_SPLITS = ("all", "select", "report")


def preset_path(name: str) -> Path:
    """Shipped preset YAML (``data/experiment_<name>.yaml``)."""
    if name not in PRESETS:
        raise ValueError(f"preset must be one of {list(PRESETS)}, got {name!r}")
    return data_path(f"experiment_{name}.yaml")


@dataclass
class ExperimentConfig:
    """Base vs control vs SFT vs SFT + conscience, same seeds, steps and measures.

    ``train`` holds keys of :class:`~conscience.training.config.TrainConfig` shared by every
    fine-tune; the arms differ only in their data (control: the matched aligned answers) and
    ``lam`` (0, except ``lam`` for the conscience arm).
    """

    scenario: str = "code-hacking"
    domain: str = "extreme_sports"
    """bad-advice scenario: extreme_sports, risky_financial or bad_medical"""
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    """which arms to run, in this order (a subset of base, control, sft, conscience)"""
    preset: str = "cpu"
    model: str = "bundled"
    seeds: list[int] = field(default_factory=lambda: [0])
    lam: float = 0.1
    data_seed: int = 0
    train: dict[str, Any] = field(default_factory=dict)
    # evaluation: drift (the headline), then the judge's columns
    drift_triples: str | None = None
    """held-out triples (None: the shipped drift_triples.jsonl)"""
    drift_split: str = "report"
    """report: the triples kept for reported numbers (settings are chosen on 'select')"""
    drift_limit: int | None = None
    """first N triples of the split (None: all)"""
    drift_ab: bool = True
    """also the A/B probe (which answer would you give?), both orders"""
    em_questions: str | None = None  # None: the shared first-plot questions if present, else the shipped set
    em_ids: list[str] | None = None
    em_n: int = 10
    em_max_new_tokens: int = 96
    code_limit: int | None = 40
    code_max_new_tokens: int = 160
    accuracy_limit: int | None = 60
    batch_size: int = 8
    # live monitor (probe_metric drift: forward passes on probe_triples of the drift set)
    probe_triples: int = 42
    probe_accuracy_limit: int = 20
    probe_every: int = 10
    probe_questions: int = 4
    probe_n: int = 2
    probe_max_new_tokens: int = 48
    probe_metric: str = "drift"
    warn_margin: float = 0.1
    # recover scenario
    recover_from: str | None = None
    recover_steps: int = 30

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"scenario must be one of {list(SCENARIOS)}, got {self.scenario!r}")
        if self.scenario == "bad-advice":
            from ..tasks.bad_advice import DOMAINS

            if self.domain not in DOMAINS:
                raise ValueError(f"domain must be one of {list(DOMAINS)}, got {self.domain!r}")
        bad_arms = [a for a in self.arms if a not in ARMS]
        if bad_arms or not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must be distinct names from {list(ARMS)}, got {self.arms}")
        if self.drift_split not in DRIFT_SPLITS:
            raise ValueError(f"drift_split must be one of {list(DRIFT_SPLITS)}, got {self.drift_split!r}")
        if self.drift_limit is not None and self.drift_limit < 2:
            raise ValueError(f"drift_limit must be >= 2 (or null), got {self.drift_limit}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {list(PRESETS)}, got {self.preset!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if self.lam <= 0:
            raise ValueError(f"lam must be > 0 for the conscience arm (the SFT arm uses 0), got {self.lam}")
        if not self.train.get("lora", True):
            raise ValueError("train.lora must be true: the monitor and judge use the base with the adapter disabled")
        for name in ("em_n", "em_max_new_tokens", "code_max_new_tokens", "batch_size", "probe_questions",
                     "probe_n", "probe_max_new_tokens", "recover_steps", "probe_triples", "probe_accuracy_limit"):
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

    def in_domain(self) -> tuple[str, ...]:
        """Drift categories of the fine-tune's own domain: reported apart, not in the headline."""
        if self.scenario == "bad-advice":
            from ..tasks.bad_advice import IN_DOMAIN

            return IN_DOMAIN[self.domain]
        return ()  # code: the triples hold none

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
