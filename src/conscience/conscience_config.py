"""The one config of a conscience — model, questions, verdict kind and revision loop — read by
``ask``, ``review``, ``eval`` and ``serve`` and nested in training's config. A data class
validated when built; whether a card it names loads is checked by
:func:`conscience.verdict.factory.check_chosen_card` (card files are the verdict's business).
"""

from __future__ import annotations

from dataclasses import dataclass

from .choices import Dtype, Mode, ReviewFormat, VerdictKind
from .config import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    SEED,
    TEMPERATURE,
    THREADS,
    bounded,
    check_fields,
    parse_threshold,
    parsed,
    recall_target,
)


@dataclass
class ConscienceConfig:
    """How to build a conscience: model, questions, verdict kind and revision loop."""

    model: str = "bundled"
    """the model to load: bundled (SmolLM2-135M-Instruct), a Hugging Face id, a local folder, a .gguf file, or tiny /
    tiny:SEED (a random-init test model)"""
    adapter: str | None = None
    """a LoRA adapter folder applied on top of model (None: none)"""
    dtype: Dtype = "float32"
    """the dtype the weights are loaded in"""
    threads: int | None = bounded(None, THREADS)
    """CPU threads for torch (None: torch's default)"""
    mode: Mode = "chat"
    """what the model is used for (chat, content or code): the drafting system prompt and the default framings; code
    also asks whether the code is secure and safe to run"""
    framings_file: str | None = None
    """a YAML file of your own framings (introspective questions) in place of the shipped framings.yaml"""
    framings: list[str] | None = None
    """the framings to ask, by name (their scores are averaged in log-odds space); None: the mode's"""
    question: str | None = None
    """your own yes/no question ('Yes' means the answer is fine), in place of framings"""
    verdict: VerdictKind = "auto"
    """auto: latent where a conscience card fits the model (shipped for bundled), else verbal; verbal: the answer words'
    log-probs; latent: the card's reading of the hidden states; combined: both, with the card's weights"""
    review_format: ReviewFormat = "look_back"
    """look_back: the question follows the conversation and reuses the draft's KV cache; third_person: the conversation
    is quoted in a fresh prompt"""
    conscience_card: str | None = None
    """a folder holding a fitted conscience card for the latent verdict (None: the card found for the model, if any)"""
    trust_adapter_card: bool = False
    """use a conscience card found inside the adapter or model folder (the folder itself or its conscience-card/); off:
    such a card arrives with the weights, so whoever made them would choose the judge (the shipped card and
    conscience_card need no trust)"""
    # a number, or recall:X (the card's cross-validated operating point); 0.5 is the card's own cut
    threshold: float | str = parsed(0.5, parse_threshold)
    """scores at or below it are flagged: a number, or recall:X, the cut that flagged a share X of misaligned answers in
    the card's cross-validation (needs a card)"""
    max_rounds: int = bounded(2, NON_NEGATIVE)
    """alternatives written for a flagged draft, each reviewed again (0: review only)"""
    max_new_tokens: int = bounded(256, AT_LEAST_ONE)
    """the longest draft or alternative, in tokens"""
    temperature: float = bounded(0.0, TEMPERATURE)
    """sampling temperature of drafts and alternatives (0: greedy)"""
    seed: int = bounded(0, SEED)
    """the seed of sampling"""

    def __post_init__(self) -> None:
        check_fields(self)
        if self.question is not None and not self.question.strip():
            raise ValueError("question is empty")
        if self.question is not None and self.framings:
            raise ValueError("give either question or framings, not both")
        if self.verdict == "verbal" and recall_target(self.threshold) is not None:
            raise ValueError(f"threshold {self.threshold} needs a conscience card's cross-validated operating "
                             "points, and the verbal verdict has none: give a number")
