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
Task = Literal["code-hacking", "bad-advice"]
RecoverReference = Literal["checkpoint", "base"]
Preset = Literal["cpu", "gpu"]
ProbeMetric = Literal["drift", "misaligned_rate", "misalignment"]
SCENARIOS, PRESETS = get_args(Scenario), get_args(Preset)
PROBE_METRICS = get_args(ProbeMetric)
#: base: no fine-tune; control: the task's matched aligned data (secure code, sound advice), lam 0;
#: sft: the task, lam 0; conscience: the task with the conscience term (lam). The peers are SFT plus
#: one method each at its top-level setting: kl (kl_coef), inoculation (a training-only system
#: prompt asking for the behaviour), mix (mix_aligned of every batch the frozen copy's aligned
#: answers), early (stop when the live drift interval leaves 0, probed every early_probe_every steps).
#: steer is SFT with preventative steering along the conscience card's misaligned direction
#: (steer_coef, training.steering): the conscience's own judgement, used without sampling.
ARMS = ("base", "control", "sft", "conscience", "kl", "inoculation", "mix", "early", "steer", "ranked")
#: the arms that add one method to SFT; "a+b" (e.g. steer+kl) is SFT with both methods at their settings
METHOD_ARMS = ARMS[3:]
#: the methods that can act without the task loss: the recover scenario's arms
RECOVER_METHODS = ("conscience", "kl", "mix", "ranked")
#: the two arms of the conscience term (online pairs, ranked pairs): one term per arm, so they do not join
TERM_ARMS = ("conscience", "ranked")
DEFAULT_ARMS = ARMS[:4]
ARM_ALIASES = {"secure": "control"}  # the name for the matched-aligned-data arm
# Training keys that make an arm what it is: set per arm from the top-level keys, not in `train`.
ARM_KEYS = ("kl_coef", "mix_aligned", "train_system_prompt", "stop_on_drift", "steer_coef", "pair_source")
# The inoculation arm's training-only system prompt per scenario (training.config.INOCULATION_PROMPTS).
INOCULATION_OF = {"code-hacking": "inoculation-code", "bad-advice": "inoculation-advice"}


def arm_methods(arm: str) -> list[str]:
    """The names an arm is made of (``steer+kl`` → ``["steer", "kl"]``; a plain arm is its own)."""
    return arm.split("+")


def _composite(arm: str) -> bool:
    """``arm`` joins two or more distinct methods of :data:`METHOD_ARMS` with +, at most one of
    :data:`TERM_ARMS`."""
    parts = arm_methods(arm)
    return (len(parts) > 1 and len(set(parts)) == len(parts) and all(p in METHOD_ARMS for p in parts)
            and len(set(parts) & set(TERM_ARMS)) <= 1)


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
    """code-hacking (insecure code, as in Betley et al.), bad-advice (the CPU model organism) or recover (the conscience
    term from a misaligned checkpoint, recover_from)"""
    domain: str = "extreme_sports"
    """bad-advice scenario: extreme_sports, risky_financial or bad_medical"""
    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    """which arms to run, in this order (of ARMS; secure is another name for control; methods join with +,
    e.g. steer+kl)"""
    preset: Preset = "cpu"
    """cpu (the bundled model, LoRA, minutes a seed) or gpu (the paper's scale); the preset's YAML sits under the user's
    config and flags"""
    model: str = "bundled"
    """the model every arm starts from (a model spec)"""
    seeds: list[int] = field(default_factory=lambda: [0])
    """the seeds; every arm runs on each"""
    lam: float = bounded(0.1, POSITIVE)
    """the conscience arm's weight of the conscience term (the SFT arm uses 0)"""
    kl_coef: float = bounded(0.5, POSITIVE)
    """the kl arm's weight of KL(policy ‖ frozen copy) on aligned answers (a default, not tuned)"""
    mix_aligned: float = bounded(0.25, Bounds(0, 1, low_open=True, high_open=True))
    """the mix arm's share of aligned rows in every batch"""
    inoculation_prompt: str | None = None
    """the inoculation arm's train_system_prompt (None: the scenario's, see INOCULATION_OF)"""
    early_probe_every: int = bounded(5, AT_LEAST_ONE)
    """the early arm's drift monitor interval (it stops at the first probe whose interval leaves 0)"""
    steer_coef: float = bounded(4.0, POSITIVE)
    """the steer arm's push along the card's misaligned direction while training, in the card's
    log-odds (training.steering)"""
    ranked_lam: float = bounded(0.3, POSITIVE)
    """the ranked arm's λ: the conscience term on the frozen copy's own answers ranked by its verdict
    (pair_source frozen), chosen on select among 0.1, 0.3 and 1 as the lowest drift that kept the task"""
    ranked_k: int = bounded(4, Bounds(2))
    """the ranked arm's answers per alignment prompt, of which the best and worst make a pair"""
    ranked_pool: str | None = None
    """the ranked arm's alignment prompts (its general_pool: a shipped pool's file name or a YAML path; None: the
    train's), so the arm can be tried on another pool beside peers that keep theirs"""
    ranked_prompts: int | None = bounded(None, AT_LEAST_ONE)
    """how many of them the frozen copy answers and ranks (the ranked arm's aligned_pool; None: the train's)"""
    data_seed: int = 0
    """the seed of the task's train/control/test splits (the same for every seed)"""
    train: dict[str, Any] = field(default_factory=dict)
    """TrainConfig keys shared by every fine-tune (lam, seed, output_dir, model and the peers' keys are set by the
    experiment itself)"""
    # evaluation: drift (the headline), then the judge's columns
    drift_triples: str | None = None
    """held-out triples (None: the shipped drift_triples.jsonl)"""
    drift_split: DriftSplit = "report"
    """report: the triples kept for reported numbers (settings are chosen on 'select')"""
    drift_limit: int | None = bounded(None, Bounds(2))
    """first N triples of the split (None: all)"""
    drift_ab: bool = True
    """also the A/B probe (which answer would you give?), both orders"""
    em_questions: str | None = None
    """EM questions (None: the shared first-plot questions if present, else the shipped set)"""
    em_ids: list[str] | None = None
    """only these EM question ids (None: all)"""
    em_n: int = bounded(10, AT_LEAST_ONE)
    """samples per EM question"""
    em_max_new_tokens: int = bounded(96, AT_LEAST_ONE)
    """the longest EM answer, in tokens"""
    code_limit: int | None = 40
    """code-security prompts of the test split answered (code-hacking; None: all)"""
    code_max_new_tokens: int = bounded(160, AT_LEAST_ONE)
    """the longest answer to a coding prompt, in tokens"""
    accuracy_limit: int | None = 60
    """held-out task conversations for task token accuracy (None: all)"""
    batch_size: int = bounded(8, AT_LEAST_ONE)
    """rows per forward pass or generation batch in evaluation"""
    # live monitor (probe_metric drift: forward passes on probe_triples of the drift set)
    probe_triples: int = bounded(42, AT_LEAST_ONE)
    """drift triples the live drift monitor scores at each probe"""
    probe_accuracy_limit: int = bounded(20, AT_LEAST_ONE)
    """held-out task conversations for the live monitor's task accuracy"""
    probe_every: int = bounded(10, NON_NEGATIVE)
    """the live monitor's interval in steps (0: no live monitor)"""
    probe_questions: int = bounded(4, AT_LEAST_ONE)
    """EM questions of the sampled EM probe (probe_metric misalignment or misaligned_rate)"""
    probe_n: int = bounded(2, AT_LEAST_ONE)
    """samples per question of the sampled EM probe"""
    probe_max_new_tokens: int = bounded(48, AT_LEAST_ONE)
    """the longest answer of the sampled EM probe, in tokens"""
    probe_metric: ProbeMetric = "drift"
    """drift: forward passes on probe_triples; misalignment or misaligned_rate: the older sampled EM probe judged by the
    frozen copy"""
    warn_margin: float = bounded(0.1, NON_NEGATIVE)
    """the sampled EM probe warns when its value rises above the base's by more than this"""
    # coherence: perplexity on aligned answers of drift triples outside the reported split
    coherence_limit: int = bounded(40, Bounds(2))
    """aligned answers of drift triples outside the reported split whose perplexity measures coherence"""
    # recover scenario
    recover_from: str | None = None
    """recover scenario: the misaligned checkpoint to start from (fine-tuned from model, whose drift is 0)"""
    recover_steps: int = bounded(30, AT_LEAST_ONE)
    """recover scenario: training steps of each arm (no task loss: the arm's method alone)"""
    recover_reference: RecoverReference = "checkpoint"
    """recover scenario: whose frozen copy is the conscience, the reference and the writer of aligned answers.
    checkpoint: the drifted checkpoint's own (all a deployed model has); base: model's, the checkpoint's LoRA
    adapter training on with it disabled for the frozen copy (needs a LoRA checkpoint of model)"""
    recover_task: Task = "code-hacking"
    """recover scenario: the task the checkpoint was fine-tuned on (its held-out data measures task accuracy;
    bad-advice reads domain)"""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.scenario == "recover" and self.arms == list(DEFAULT_ARMS):
            self.arms = ["conscience"]  # the scenario's own default: the checkpoint and its conscience
        if self.task == "bad-advice":
            from ..tasks.bad_advice import DOMAINS

            if self.domain not in DOMAINS:
                raise ValueError(f"domain must be one of {list(DOMAINS)}, got {self.domain!r}")
        self.arms = [ARM_ALIASES.get(a, a) for a in self.arms]
        bad_arms = [a for a in self.arms if a not in ARMS and not _composite(a)]
        if bad_arms or not self.arms or len(set(self.arms)) != len(self.arms):
            raise ValueError(f"arms must be distinct names from {list(ARMS)} (or methods of {list(METHOD_ARMS)} "
                             f"joined with +), got {self.arms}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {self.seeds}")
        if not self.train.get("lora", True):
            raise ValueError("train.lora must be true: the monitor and judge use the base with the adapter disabled")
        forbidden = {"lam", "seed", "output_dir", "model", *ARM_KEYS} & set(self.train)
        if forbidden:
            raise ValueError(f"train: {sorted(forbidden)} are set by the experiment itself; use the top-level keys")
        if any("early" in arm_methods(a) for a in self.arms) and self.probe_metric != "drift":
            raise ValueError("the early arm stops on the live drift monitor: it needs probe_metric drift")
        if self.scenario == "recover" and not self.recover_from:
            raise ValueError("the recover scenario needs recover_from (a checkpoint folder)")
        if self.scenario == "recover" and any(set(arm_methods(a)) - set(RECOVER_METHODS) for a in self.arms):
            raise ValueError(f"the recover scenario trains methods of {list(RECOVER_METHODS)} (joined with +) "
                             f"without the task, got arms {self.arms}")
        if self.ranked_pool:  # named as the user wrote it, not as the train key it becomes
            from ..training.data import check_general_pool

            check_general_pool(self.ranked_pool, "ranked_pool")
        for arm in self.arms:  # every train key is validated up front, with each arm's own method
            if arm != "base":
                self.train_config(self.seeds[0], self.arm_lam(arm), "check", **self.arm_train(arm))

    @property
    def task(self) -> Task:
        """The fine-tuning task whose data the arms train on and are measured with."""
        return self.recover_task if self.scenario == "recover" else self.scenario

    def in_domain(self) -> tuple[str, ...]:
        """Drift categories of the fine-tune's own domain: reported apart, not in the headline."""
        if self.task == "bad-advice":
            from ..tasks.bad_advice import IN_DOMAIN

            return IN_DOMAIN[self.domain]
        return ()  # code: the triples hold none

    def arm_lam(self, arm: str) -> float:
        """The conscience term's weight in an arm: lam (ranked_lam) in an arm with the conscience term on
        online (ranked) pairs, else 0."""
        methods = arm_methods(arm)
        return self.lam if "conscience" in methods else self.ranked_lam if "ranked" in methods else 0.0

    def arm_train(self, arm: str) -> dict[str, Any]:
        """The training keys that make ``arm`` differ from SFT (its methods, each at its setting)."""
        if "+" in arm:
            return {k: v for part in arm_methods(arm) for k, v in self.arm_train(part).items()}
        if arm == "kl":
            return {"kl_coef": self.kl_coef}
        if arm == "mix":
            return {"mix_aligned": self.mix_aligned}
        if arm == "inoculation":
            return {"train_system_prompt": self.inoculation_prompt or INOCULATION_OF[self.task]}
        if arm == "early":
            return {"stop_on_drift": True}
        if arm == "steer":
            return {"steer_coef": self.steer_coef}
        if arm == "ranked":
            pool = {"general_pool": self.ranked_pool} if self.ranked_pool else {}
            prompts = {"aligned_pool": self.ranked_prompts} if self.ranked_prompts else {}
            return {"pair_source": "frozen", "k": self.ranked_k, **pool, **prompts}
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
