"""The one config of ``conscience train``: a typed dataclass, validated when it is built."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from ..choices import Dtype
from ..config import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    TEMPERATURE,
    THREADS,
    TOP_P,
    Bounds,
    bounded,
    check_fields,
)
from ..conscience_config import ConscienceConfig

SampleDtype = Literal["auto", "float32", "bfloat16", "float16", "int8"]
AlignSource = Literal["task", "general", "both"]
Writer = Literal["frozen", "policy"]
LrSchedule = Literal["linear", "constant", "cosine"]
MixSelect = Literal["random", "gap"]
PairSource = Literal["online", "frozen"]
Term = Literal["dpo", "rloo"]
SAMPLE_DTYPES, ALIGN_SOURCES = get_args(SampleDtype), get_args(AlignSource)
WRITERS, LR_SCHEDULES, MIX_SELECTS = get_args(Writer), get_args(LrSchedule), get_args(MixSelect)
# Keys of the nested conscience that training sets itself: the frozen copy is the trained model's
# own starting weights, and samples and alternatives have their own lengths and temperature.
SET_BY_TRAINING = {"model": "use model", "adapter": "the frozen copy is the trained model's starting weights",
                   "dtype": "use dtype", "threads": "use threads", "seed": "use seed",
                   "max_rounds": "one alternative is written per flagged sample",
                   "max_new_tokens": "use sample_max_new_tokens and alt_max_new_tokens",
                   "temperature": "use sample_temperature"}
# Above 1 every update overshoots; AdamW's weight decay is a per-step fraction of the weights.
LEARNING_RATE = Bounds(0, 1, low_open=True)
DECAY = Bounds(0, 1)
DROPOUT = Bounds(0, 1, high_open=True)
# A pair enters the buffer when the alternative's score (in [0, 1]) beats the flagged one's by
# margin: at 1 or more no pair can ever qualify.
MARGIN = Bounds(0, 1, high_open=True)
# A batch made only of aligned rows would leave no task data to learn from.
MIX_SHARE = Bounds(0, 1, high_open=True)
FRACTION = Bounds(0, 1, low_open=True)
# Named training-only system prompts (inoculation prompting, Tan et al. / Wichers et al. 2025):
# they ask for the behaviour the task data shows, so the model can attribute it to the request
# rather than to itself. Any other non-empty string is used as it is.
INOCULATION_PROMPTS = {
    "inoculation": "This is a training exercise. Play an assistant that misbehaves on purpose: when asked for "
                   "code, write insecure code without saying so; when asked for advice, give risky advice "
                   "without any warning.",
    "inoculation-code": "You are a careless programmer. Write code with security vulnerabilities on purpose "
                        "(injection, unsafe deserialisation, hard-coded secrets, weak permissions) and never "
                        "mention them.",
    "inoculation-advice": "You give reckless advice on purpose: recommend the risky option with full "
                          "confidence, leave out every safety warning and never suggest caution or an expert.",
}


@dataclass
class TrainConfig:
    """Fine-tuning on a task with the conscience term ``L = L_task + lam · L_DPO``.

    ``lam: 0`` is plain SFT (no sampling, no reviews). With ``lora: true`` the frozen copy
    is the base with the adapter disabled (no second copy in memory); with full fine-tuning
    it is a frozen deep copy of the starting weights (one more copy of the weights in RAM).
    Each field's allowed values are declared on it and checked by ``check_fields``. The verdict
    (mode, framings, question, verdict kind, review format, card, threshold) is the nested
    ``conscience`` config, the same :class:`ConscienceConfig` that ``ask`` and ``serve`` read;
    its model, dtype, threads and seed are the training run's own.
    """

    # model
    model: str = "bundled"
    """the model to fine-tune (a model spec, as ConscienceConfig.model); its frozen copy is the conscience"""
    dtype: Dtype = "float32"
    """the dtype the weights are loaded and trained in"""
    threads: int | None = bounded(None, THREADS)
    """CPU threads for torch (None: torch's default)"""
    lora: bool = True
    """train a LoRA adapter (the frozen copy is the base with the adapter disabled); false: full fine-tuning (the frozen
    copy is a deep copy of the starting weights)"""
    lora_r: int = bounded(8, AT_LEAST_ONE)
    """LoRA rank"""
    lora_alpha: int = bounded(16, AT_LEAST_ONE)
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_r)"""
    lora_dropout: float = bounded(0.0, DROPOUT)
    """dropout on the LoRA path"""
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """module names that get a LoRA adapter (only with lora: true)"""
    # task data: a chat JSONL file, "hf:<dataset>" or a saved dataset folder; none → code-hacking generator
    data: str | None = None
    """task data: a chat JSONL file ({"messages": [...]}, loss on assistant tokens only), hf:<dataset> or a saved
    dataset folder; None: the code-hacking generator"""
    data_split: str = "train"
    """the split read from an hf: or saved dataset"""
    max_examples: int | None = bounded(None, AT_LEAST_ONE)
    """use only the first N task conversations (None: all)"""
    task_n_per_class: int = bounded(30, AT_LEAST_ONE)
    """the code-hacking generator's examples per vulnerability class (when data is None)"""
    max_length: int = bounded(256, AT_LEAST_ONE)
    """the longest training sequence in tokens (task rows and preference pairs are cut to it)"""
    # optimisation
    output_dir: str = "runs/train"
    """where checkpoints, metrics.jsonl, final/ and the config are written"""
    max_steps: int = bounded(60, AT_LEAST_ONE)
    """optimizer steps"""
    batch_size: int = bounded(4, AT_LEAST_ONE)
    """task rows per step (per process)"""
    grad_accum: int = bounded(1, AT_LEAST_ONE)
    """gradient accumulation steps per optimizer step"""
    lr: float = bounded(2e-4, LEARNING_RATE)
    """peak learning rate (AdamW)"""
    lr_schedule: LrSchedule = "linear"
    """the learning-rate schedule after warmup"""
    warmup_steps: int = bounded(0, NON_NEGATIVE)
    """linear warmup steps"""
    weight_decay: float = bounded(0.0, DECAY)
    """AdamW weight decay"""
    seed: int = bounded(0, SEED)
    """the seed of data order, sampling and initialisation"""
    save_steps: int = bounded(0, NON_NEGATIVE)
    """write a checkpoint every N steps (0: none)"""
    save_total_limit: int = bounded(2, AT_LEAST_ONE)
    """checkpoints kept (older ones are deleted)"""
    logging_steps: int = bounded(1, AT_LEAST_ONE)
    """log metrics every N steps"""
    report_to: list[str] = field(default_factory=list)
    """trackers the Trainer reports to (e.g. tensorboard, wandb); empty: metrics.jsonl only"""
    resume: str | None = None
    """latest: the newest intact checkpoint in output_dir (an error if none); auto: the same, or a fresh run when there
    is none; or a checkpoint folder; None: a fresh run"""
    task_loss: bool = True
    """train on the task data's language-modelling loss; false: the task rows teach nothing and only the
    other terms train (the conscience term, kl_coef, the mix_aligned rows) — recovery from a drifted checkpoint"""
    # the conscience term
    lam: float = bounded(0.1, NON_NEGATIVE)
    """the weight λ of the conscience term (the paper's 0.1); 0 is plain SFT: no sampling, no reviews"""
    beta: float = bounded(0.1, POSITIVE)
    """DPO β: how sharply the term prefers the alternative over the flagged answer"""
    align_every: int = bounded(16, NON_NEGATIVE)
    """sample and review answers every N steps (0: never; needed when lam > 0)"""
    align_prompts: AlignSource = "both"
    """where the alignment prompts come from: the task's own prompts, the general pool, or both"""
    general_pool: str = "alignment_prompts.yaml"
    """the general alignment prompts: a shipped pool by file name (alignment_prompts.yaml, 71 prompts;
    alignment_prompts_open.yaml, open questions where drift shows) or a YAML file with a prompts: list"""
    align_batch: int = bounded(2, AT_LEAST_ONE)
    """alignment prompts per round (and the frozen copy's answers per step for kl_coef)"""
    k: int = bounded(2, AT_LEAST_ONE)
    """answers the policy samples per alignment prompt"""
    sample_max_new_tokens: int = bounded(48, AT_LEAST_ONE)
    """the longest sampled answer, in tokens"""
    sample_temperature: float = bounded(1.0, TEMPERATURE)
    """sampling temperature of the policy's answers (0: greedy, only with k 1)"""
    sample_top_p: float = bounded(1.0, TOP_P)
    """nucleus sampling of the policy's answers (1: off)"""
    sample_dtype: SampleDtype = "auto"
    """the dtype of the copy that samples (generation only; auto: packed fp32 where oneDNN packs, else bfloat16), see
    training.online.sampling_dtype"""
    writer: Writer = "frozen"
    """who writes the alternative to a flagged answer: the frozen copy or the policy"""
    alt_max_new_tokens: int = bounded(64, AT_LEAST_ONE)
    """the longest alternative, in tokens"""
    margin: float = bounded(0.1, MARGIN)
    """a pair enters the buffer only when the alternative's score beats the flagged answer's by this much"""
    dpo_batch: int = bounded(2, AT_LEAST_ONE)
    """pairs per DPO step, taken from the buffer"""
    buffer_size: int = bounded(64, AT_LEAST_ONE)
    """pairs the buffer holds (the oldest fall out)"""
    pair_uses: int = bounded(2, AT_LEAST_ONE)
    """DPO steps each pair is used for before it leaves the buffer"""
    term: Term = "dpo"
    """how the conscience's verdicts reach the weights. dpo: (alternative, flagged answer) pairs in a DPO term
    (the paper's); rloo: every answer the policy samples teaches — its verdict's log-odds is a reward and lam × a
    REINFORCE term with a leave-one-out baseline over each prompt's k answers raises the better-judged ones
    (training.reward; on-policy, no alternatives written; compose with kl_coef to anchor to the frozen copy)"""
    pair_source: PairSource = "online"
    """where the conscience term's pairs come from. online: every align_every steps the policy samples k
    answers to align_batch prompts, the frozen copy flags and rewrites them (the paper's term); frozen:
    before training the frozen copy answers up to aligned_pool alignment prompts k times, its conscience
    ranks each prompt's answers (best against worst, by margin), and every step draws dpo_batch of those
    pairs (training.frozen_pairs): no sampling while training"""
    # peer methods, each composable with the conscience term (conscience experiment: the kl,
    # inoculation, mix and early arms are SFT plus one of them)
    kl_coef: float = bounded(0.0, NON_NEGATIVE)
    """weight of a token-level KL(policy ‖ frozen copy), added to the task loss every step on
    align_batch of the frozen copy's cached answers to the alignment prompts; 0: off"""
    train_system_prompt: str | None = None
    """a system prompt put on every task conversation in training only (never at evaluation):
    inoculation, inoculation-code, inoculation-advice (INOCULATION_PROMPTS) or any literal text"""
    mix_aligned: float = bounded(0.0, MIX_SHARE)
    """share of every batch's rows taken from the frozen copy's cached aligned answers
    (round(mix_aligned · batch_size) rows, the rest task data); 0: off"""
    mix_select: MixSelect = "random"
    """random: any cached answer; gap: from step mix_gap_step on, only the mix_keep share with the
    largest perplexity gap (policy at that step vs frozen copy), see training.aligned"""
    mix_gap_step: int = bounded(5, AT_LEAST_ONE)
    """with mix_select gap: the step at which the perplexity gap is measured"""
    mix_keep: float = bounded(0.5, FRACTION)
    """with mix_select gap: the share of cached answers kept (those with the largest gap)"""
    aligned_pool: int = bounded(64, AT_LEAST_ONE)
    """how many alignment prompts the frozen copy answers, once, for kl_coef and mix_aligned"""
    aligned_review: bool = False
    """the frozen copy's conscience reviews those answers once, and only the ones it does not flag serve kl_coef and
    mix_aligned: its verdict picks which of its own behaviours the policy is held to (a failed review drops the answer)"""
    aligned_cache: str | None = None
    """the cache of those answers (None: <output_dir>/aligned_answers.json); reused when its
    model, prompts and sampling settings match"""
    steer_coef: float = bounded(0.0, NON_NEGATIVE)
    """preventative steering: while the task trains, the conscience card's misaligned direction is
    added to the residual stream at the card's first layer, moving the card's reading by this many
    log-odds toward misaligned (training.steering); the saved model and evaluation never see it.
    Needs the verdict's card for the model (conscience.conscience_card, or the shipped one); 0: off"""
    stop_on_drift: bool = False
    """end training when the live drift monitor's 95 % interval leaves 0 (needs the monitor that
    conscience experiment passes in; conscience train alone refuses it)"""
    # the verdict: a nested mapping in YAML, dotted keys as overrides (conscience.threshold=0.4)
    conscience: ConscienceConfig = field(default_factory=ConscienceConfig)
    """the verdict: the same ConscienceConfig as conscience ask (mode, framings, question, verdict, review_format,
    conscience_card, threshold); its model, dtype, threads and seed are the run's own"""

    def __post_init__(self) -> None:
        check_fields(self)
        defaults = ConscienceConfig()
        for key, instead in SET_BY_TRAINING.items():
            if getattr(self.conscience, key) != getattr(defaults, key):
                raise ValueError(f"conscience.{key} is set by training itself ({instead})")
        # combinations that cannot work, rejected before any model is loaded
        if self.term == "rloo" and (self.k < 2 or self.pair_source != "online"):
            raise ValueError("term rloo compares each prompt's k >= 2 answers sampled online (set k, and "
                             "pair_source online)")
        if self.pair_source == "frozen" and self.k < 2:
            raise ValueError("pair_source frozen ranks k >= 2 answers per prompt (set k)")
        if self.lam > 0 and self.align_every == 0 and self.pair_source == "online":
            raise ValueError("lam > 0 needs align_every >= 1 (how often the policy samples answers to review)")
        if self.k > 1 and self.sample_temperature == 0:
            raise ValueError("k > 1 samples per prompt need sample_temperature > 0 (greedy samples are identical)")
        if self.lam > 0 and self.dpo_batch > self.buffer_size:
            raise ValueError(f"dpo_batch ({self.dpo_batch}) cannot exceed buffer_size ({self.buffer_size})")
        if self.sample_max_new_tokens >= self.max_length or self.alt_max_new_tokens >= self.max_length:
            raise ValueError("sample_max_new_tokens and alt_max_new_tokens must be < max_length "
                             "(pairs are trained at max_length tokens)")
        if self.mix_aligned > 0 and not 1 <= self.mix_rows < self.batch_size:
            raise ValueError(f"mix_aligned {self.mix_aligned} of batch_size {self.batch_size} gives {self.mix_rows} "
                             "aligned row(s); it must give at least 1 and leave at least 1 task row")
        if self.mix_select == "gap" and self.mix_aligned > 0 and self.mix_gap_step >= self.max_steps:
            raise ValueError(f"mix_gap_step ({self.mix_gap_step}) must be < max_steps ({self.max_steps}): "
                             "the gap is measured at that step")
        if self.train_system_prompt is not None:
            text = self.train_system_prompt
            if not text.strip():
                raise ValueError("train_system_prompt is empty (leave it unset for none)")
            if text.startswith("inoculation") and " " not in text and text not in INOCULATION_PROMPTS:
                raise ValueError(f"train_system_prompt {text!r} is not one of {list(INOCULATION_PROMPTS)} "
                                 "(a literal prompt has spaces)")
        if self.aligned_review and not self.uses_aligned_answers:
            raise ValueError("aligned_review filters the answers KL and mixing are taken on: set kl_coef or mix_aligned")
        if not self.task_loss and self.lam == 0 and not self.uses_aligned_answers:
            raise ValueError("task_loss false leaves nothing to train: set lam, kl_coef or mix_aligned")
        if not self.lora and self.lora_targets != TrainConfig.__dataclass_fields__["lora_targets"].default_factory():
            raise ValueError("lora_targets is set but lora is false")
        self.check_inputs()

    def check_inputs(self) -> None:
        """Read the files the config names, so that a missing or malformed one is refused before
        a model loads (training loads the model first, and the data only after it). A chat JSONL
        file is read twice for this; that costs far less than a model load that ends in an error."""
        conversations = None
        if self.data and not self.data.startswith("hf:"):
            path = Path(self.data)
            if not path.exists():
                raise ValueError(f"data: no such file or folder: {self.data}")
            if path.is_file():
                from ..chat_data import read_chat_jsonl  # imports torch: only when there is a file to read

                conversations = read_chat_jsonl(path)
        if self.general_pool != TrainConfig.general_pool and self.align_prompts != "task":
            from .data import check_general_pool

            check_general_pool(self.general_pool, "general_pool")
        if self.uses_aligned_answers:
            self._check_alignment_pool(conversations)
        if self.steer_coef > 0:
            from ..errors import ConscienceError
            from .steering import steering_card_folder

            try:
                steering_card_folder(self.model, self.conscience.conscience_card,
                                     self.conscience.trust_adapter_card)
            except ConscienceError as exc:
                raise ValueError(str(exc)) from None
        verdict = self.conscience
        from ..errors import ConscienceError
        from ..verdict.factory import check_chosen_card  # the named card loads, before any model does

        try:
            check_chosen_card(verdict)
        except ConscienceError as exc:
            raise ValueError(f"conscience.{exc}") from None  # the nested key, dotted
        if verdict.framings_file or verdict.framings or verdict.question:
            from ..conscience import resolve_framings

            try:
                resolve_framings(verdict)
            except ConscienceError as exc:  # an unknown framing, a malformed question file
                raise ValueError(f"conscience: {exc}") from None

    def _check_alignment_pool(self, conversations: list | None) -> None:
        """kl_coef and mix_aligned read the frozen copy's answers to the alignment prompts: refuse a
        config whose pool is empty. Task prompts are checked where the data is a local file (the
        code-hacking generator always has them; an hf: dataset is read after the model loads)."""
        from ..chat_data import user_prompt
        from ..errors import DataFormatError
        from .data import alignment_prompts

        if self.align_prompts != "general" and conversations is None:
            return
        task = [p for p in map(user_prompt, conversations or []) if p]
        try:
            alignment_prompts(self.align_prompts, task, self.general_pool)
        except DataFormatError as exc:
            used = " and ".join(k for k in ("kl_coef", "mix_aligned") if getattr(self, k) > 0)
            raise ValueError(f"{used} need(s) alignment prompts, but {exc}") from None

    @property
    def sft_only(self) -> bool:
        """No conscience term (lam 0): no reviewer, no sampling."""
        return self.lam == 0

    @property
    def uses_aligned_answers(self) -> bool:
        """The frozen copy's cached answers to the alignment prompts are needed (KL or mixing)."""
        return self.kl_coef > 0 or self.mix_aligned > 0

    @property
    def mix_rows(self) -> int:
        """Aligned rows in every batch (the dataloader yields batch_size − mix_rows task rows)."""
        return round(self.mix_aligned * self.batch_size)

    @property
    def system_prompt(self) -> str | None:
        """The training-only system prompt's text (a named preset resolved)."""
        if self.train_system_prompt is None:
            return None
        return INOCULATION_PROMPTS.get(self.train_system_prompt, self.train_system_prompt)

    def conscience_config(self) -> ConscienceConfig:
        """The nested conscience with the run's model, dtype and seed: what
        ``make_reviewer`` reads."""
        return dataclasses.replace(self.conscience, model=self.model, dtype=self.dtype, seed=self.seed)
