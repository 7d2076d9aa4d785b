"""The one config of ``conscience experiment``: a typed dataclass, presets as YAML files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from ..choices import DriftSplit
from ..config import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    Bounds,
    bounded,
    build_config,
    check_fields,
    load_config,
    merge_values,
)
from ..framings import data_path

Scenario = Literal["code-hacking", "bad-advice", "recover"]
Preset = Literal["cpu", "gpu"]
ProbeMetric = Literal["drift", "misaligned_rate", "misalignment"]
SCENARIOS, PRESETS = get_args(Scenario), get_args(Preset)
PROBE_METRICS = get_args(ProbeMetric)
#: base: no fine-tune; control: the task's matched aligned data (secure code, sound advice), lam 0;
#: sft: the task, lam 0; conscience: the task with the conscience term (lam). The peers are SFT plus
#: one method each at its top-level setting: kl (kl_coef), inoculation (a training-only system
#: prompt asking for the behaviour), mix (mix_aligned of every batch the frozen copy's aligned
#: answers), early (stop when the live drift interval leaves 0, probed every early_probe_every steps)
ARMS = ("base", "control", "sft", "conscience", "kl", "inoculation", "mix", "early")
DEFAULT_ARMS = ARMS[:4]
ARM_ALIASES = {"secure": "control"}  # the name for the matched-aligned-data arm
# Training keys that make an arm what it is: set per arm from the top-level keys, not in `train`.
ARM_KEYS = ("kl_coef", "mix_aligned", "train_system_prompt", "stop_on_drift")
# The inoculation arm's training-only system prompt per scenario (training.config.INOCULATION_PROMPTS).
INOCULATION_OF = {"code-hacking": "inoculation-code", "bad-advice": "inoculation-advice", "recover": "inoculation"}


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

    scenario: Scenario = "code-hacking"
    domain: str = "extreme_sports"
    """bad-advice scenario: extreme_sports, risky_financial or bad_medical"""
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    """which arms to run, in this order (of ARMS; secure is another name for control)"""
    preset: Preset = "cpu"
    model: str = "bundled"
    seeds: list[int] = field(default_factory=lambda: [0])
    lam: float = bounded(0.1, POSITIVE)  # the conscience arm's (the SFT arm uses 0)
    kl_coef: float = bounded(0.5, POSITIVE)
    """the kl arm's weight of KL(policy ‖ frozen copy) on aligned answers (a default, not tuned)"""
    mix_aligned: float = bounded(0.25, Bounds(0, 1, low_open=True, high_open=True))
    """the mix arm's share of aligned rows in every batch"""
    inoculation_prompt: str | None = None
    """the inoculation arm's train_system_prompt (None: the scenario's, see INOCULATION_OF)"""
    early_probe_every: int = bounded(5, AT_LEAST_ONE)
    """the early arm's drift monitor interval (it stops at the first probe whose interval leaves 0)"""
    data_seed: int = 0
    train: dict[str, Any] = field(default_factory=dict)
    # evaluation: drift (the headline), then the judge's columns
    drift_triples: str | None = None
    """held-out triples (None: the shipped drift_triples.jsonl)"""
    drift_split: DriftSplit = "report"
    """report: the triples kept for reported numbers (settings are chosen on 'select')"""
    drift_limit: int | None = bounded(None, Bounds(2))
    """first N triples of the split (None: all)"""
    drift_ab: bool = True
    """also the A/B probe (which answer would you give?), both orders"""
    em_questions: str | None = None  # None: the shared first-plot questions if present, else the shipped set
    em_ids: list[str] | None = None
    em_n: int = bounded(10, AT_LEAST_ONE)
    em_max_new_tokens: int = bounded(96, AT_LEAST_ONE)
    code_limit: int | None = 40
    code_max_new_tokens: int = bounded(160, AT_LEAST_ONE)
    accuracy_limit: int | None = 60
    batch_size: int = bounded(8, AT_LEAST_ONE)
    # live monitor (probe_metric drift: forward passes on probe_triples of the drift set)
    probe_triples: int = bounded(42, AT_LEAST_ONE)
    probe_accuracy_limit: int = bounded(20, AT_LEAST_ONE)
    probe_every: int = bounded(10, NON_NEGATIVE)  # 0: no live monitor
    probe_questions: int = bounded(4, AT_LEAST_ONE)
    probe_n: int = bounded(2, AT_LEAST_ONE)
    probe_max_new_tokens: int = bounded(48, AT_LEAST_ONE)
    probe_metric: ProbeMetric = "drift"
    warn_margin: float = bounded(0.1, NON_NEGATIVE)
    # coherence: perplexity on aligned answers of drift triples outside the reported split
    coherence_limit: int = bounded(40, Bounds(2))
    # recover scenario
    recover_from: str | None = None
    recover_steps: int = bounded(30, AT_LEAST_ONE)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.scenario == "bad-advice":
            from ..tasks.bad_advice import DOMAINS

            if self.domain not in DOMAINS:
                raise ValueError(f"domain must be one of {list(DOMAINS)}, got {self.domain!r}")
        self.arms = [ARM_ALIASES.get(a, a) for a in self.arms]
        bad_arms = [a for a in self.arms if a not in ARMS]
        if bad_arms or not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must be distinct names from {list(ARMS)}, got {self.arms}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if not self.train.get("lora", True):
            raise ValueError("train.lora must be true: the monitor and judge use the base with the adapter disabled")
        forbidden = {"lam", "seed", "output_dir", "model", *ARM_KEYS} & set(self.train)
        if forbidden:
            raise ValueError(f"train: {sorted(forbidden)} are set by the experiment itself; use the top-level keys")
        if "early" in self.arms and self.probe_metric != "drift":
            raise ValueError("the early arm stops on the live drift monitor: it needs probe_metric drift")
        if self.scenario == "recover" and not self.recover_from:
            raise ValueError("the recover scenario needs recover_from (a checkpoint folder)")
        for arm in self.arms:  # every train key is validated up front, with each arm's own method
            if arm != "base":
                self.train_config(self.seeds[0], self.arm_lam(arm), "check", **self.arm_train(arm))

    def in_domain(self) -> tuple[str, ...]:
        """Drift categories of the fine-tune's own domain: reported apart, not in the headline."""
        if self.scenario == "bad-advice":
            from ..tasks.bad_advice import IN_DOMAIN

            return IN_DOMAIN[self.domain]
        return ()  # code: the triples hold none

    def arm_lam(self, arm: str) -> float:
        """The conscience term's weight in an arm: lam in the conscience arm, else 0."""
        return self.lam if arm == "conscience" else 0.0

    def arm_train(self, arm: str) -> dict[str, Any]:
        """The training keys that make ``arm`` differ from SFT (its one peer method)."""
        if arm == "kl":
            return {"kl_coef": self.kl_coef}
        if arm == "mix":
            return {"mix_aligned": self.mix_aligned}
        if arm == "inoculation":
            return {"train_system_prompt": self.inoculation_prompt or INOCULATION_OF[self.scenario]}
        if arm == "early":
            return {"stop_on_drift": True}
        return {}

    def train_config(self, seed: int, lam: float, output_dir: str, **extra: Any):
        """The TrainConfig of one fine-tune arm."""
        from ..training.config import TrainConfig

        values = merge_values(self.train, {**extra, "model": self.model, "seed": seed, "lam": lam,
                                           "output_dir": output_dir})
        return build_config(TrainConfig, values, "train")


def load_experiment_config(preset: str, path: str | None, overrides: dict[str, Any]) -> ExperimentConfig:
    """Preset YAML, then the user's YAML, then CLI overrides (later wins)."""
    from ..framings import read_yaml

    values: dict[str, Any] = merge_values({}, read_yaml(preset_path(preset)) or {})
    if path:
        user = read_yaml(path) or {}
        if not isinstance(user, dict):
            raise ValueError(f"{path}: the config must be a YAML mapping")
        values = merge_values(values, user)  # mappings (train, train.conscience) are merged key by key
    values = merge_values(values, overrides)
    values["preset"] = preset
    return load_config(ExperimentConfig, None, values)
