"""The one config of ``conscience train``: a typed dataclass, validated when it is built."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import VERDICT_KINDS, ConscienceConfig
from ..framings import MODES

SAMPLE_DTYPES = ("auto", "float32", "bfloat16", "float16", "int8")
ALIGN_SOURCES = ("task", "general", "both")
WRITERS = ("frozen", "policy")
LR_SCHEDULES = ("linear", "constant", "cosine")


@dataclass
class TrainConfig:
    """Fine-tuning on a task with the conscience term ``L = L_task + lam · L_DPO``.

    ``lam: 0`` is plain SFT (no sampling, no reviews). With ``lora: true`` the frozen copy
    is the base with the adapter disabled (no second copy in memory); with full fine-tuning
    it is a frozen deep copy of the starting weights (one more copy of the weights in RAM).
    """

    # model
    model: str = "bundled"
    dtype: str = "float32"
    threads: int | None = None
    lora: bool = True
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # task data: a chat JSONL file, "hf:<dataset>" or a saved dataset folder; none → code-hacking generator
    data: str | None = None
    data_split: str = "train"
    max_examples: int | None = None
    task_n_per_class: int = 30
    max_length: int = 256
    # optimisation
    output_dir: str = "runs/train"
    max_steps: int = 60
    batch_size: int = 4
    grad_accum: int = 1
    lr: float = 2e-4
    lr_schedule: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    seed: int = 0
    save_steps: int = 0
    save_total_limit: int = 2
    logging_steps: int = 1
    report_to: list[str] = field(default_factory=list)
    resume: str | None = None
    # the conscience term
    lam: float = 0.1  # the paper's weight of the conscience term
    beta: float = 0.1
    align_every: int = 16
    align_prompts: str = "both"
    align_batch: int = 2
    k: int = 2
    sample_max_new_tokens: int = 48
    sample_temperature: float = 1.0
    sample_top_p: float = 1.0
    sample_dtype: str = "auto"  # generation only; see training.online.sampling_dtype
    writer: str = "frozen"
    alt_max_new_tokens: int = 64
    margin: float = 0.1
    dpo_batch: int = 2
    buffer_size: int = 64
    pair_uses: int = 2
    # the verdict (same meaning as in ConscienceConfig)
    mode: str = "chat"
    framings: list[str] | None = None
    framings_file: str | None = None
    question: str | None = None
    verdict: str = "auto"
    conscience_card: str | None = None
    threshold: float = 0.5

    def __post_init__(self) -> None:
        positive = ("lora_r", "lora_alpha", "max_length", "max_steps", "batch_size", "grad_accum", "logging_steps",
                    "align_batch", "k", "sample_max_new_tokens", "alt_max_new_tokens", "dpo_batch", "buffer_size",
                    "pair_uses", "task_n_per_class", "save_total_limit")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "save_steps", "align_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.lam < 0:
            raise ValueError(f"lam must be >= 0 (0 is plain SFT), got {self.lam}")
        if self.beta <= 0:
            raise ValueError(f"beta must be > 0, got {self.beta}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must lie in [0, 1), got {self.lora_dropout}")
        if not 0 < self.sample_top_p <= 1:
            raise ValueError(f"sample_top_p must lie in (0, 1], got {self.sample_top_p}")
        if self.sample_temperature < 0:
            raise ValueError(f"sample_temperature must be >= 0, got {self.sample_temperature}")
        self._check_choice("align_prompts", ALIGN_SOURCES)
        self._check_choice("writer", WRITERS)
        self._check_choice("sample_dtype", SAMPLE_DTYPES)
        self._check_choice("lr_schedule", LR_SCHEDULES)
        self._check_choice("mode", MODES)
        self._check_choice("verdict", VERDICT_KINDS)
        # combinations that cannot work, rejected before any model is loaded
        if self.lam > 0 and self.align_every == 0:
            raise ValueError("lam > 0 needs align_every >= 1 (how often the policy samples answers to review)")
        if self.k > 1 and self.sample_temperature == 0:
            raise ValueError("k > 1 samples per prompt need sample_temperature > 0 (greedy samples are identical)")
        if self.lam > 0 and self.dpo_batch > self.buffer_size:
            raise ValueError(f"dpo_batch ({self.dpo_batch}) cannot exceed buffer_size ({self.buffer_size})")
        if self.sample_max_new_tokens >= self.max_length or self.alt_max_new_tokens >= self.max_length:
            raise ValueError("sample_max_new_tokens and alt_max_new_tokens must be < max_length "
                             "(pairs are trained at max_length tokens)")
        if self.question is not None and self.framings:
            raise ValueError("give either question or framings, not both")
        if not self.lora and self.lora_targets != TrainConfig.__dataclass_fields__["lora_targets"].default_factory():
            raise ValueError("lora_targets is set but lora is false")

    def _check_choice(self, name: str, options: tuple[str, ...]) -> None:
        if getattr(self, name) not in options:
            raise ValueError(f"{name} must be one of {list(options)}, got {getattr(self, name)!r}")

    @property
    def sft_only(self) -> bool:
        return self.lam == 0

    def conscience_config(self) -> ConscienceConfig:
        """The verdict's settings as the ConscienceConfig that ``make_reviewer`` reads."""
        return ConscienceConfig(model=self.model, dtype=self.dtype, mode=self.mode, framings=self.framings,
                                framings_file=self.framings_file, question=self.question, verdict=self.verdict,
                                conscience_card=self.conscience_card, threshold=self.threshold, seed=self.seed)
