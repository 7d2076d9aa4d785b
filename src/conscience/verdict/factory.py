"""The reviewer a config asks for — verbal, latent or combined — with its card found (or fitted
on first use), returned together with the reason it was chosen. Library code does not print:
callers that talk to a user report the reason."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from ..config import recall_target
from ..errors import ConscienceError
from ..framings import Framing, load_framings, mode_settings
from ..models import LoadedModel, base_identity, cache_root
from .card import check_card, find_card, load_card, weights_card
from .code_route import CodeRoutedReviewer, find_code_card
from .latent import CombinedReviewer, LatentReviewer, model_shape
from .operating_point import threshold_for_recall
from .types import Reviewer
from .verbal import VerbalReviewer

if TYPE_CHECKING:
    from ..conscience_config import ConscienceConfig


@dataclass
class ReviewerChoice:
    """The reviewer built for a config, and why it is that one (one line, for the user)."""

    reviewer: Reviewer
    reason: str


def resolve_framings(cfg: ConscienceConfig) -> list[Framing]:
    """The framings a config asks for: its own question, named framings, or the mode's."""
    from ..config import utf8_problem
    from ..framings import custom_framing

    if cfg.question:
        return [custom_framing(cfg.question)]
    try:
        available = load_framings(cfg.framings_file)
    except UnicodeDecodeError as exc:
        raise ConscienceError(f"{cfg.framings_file}: {utf8_problem(exc)}") from None
    names = cfg.framings or [n for n in mode_settings(cfg.mode)["framings"] if n in available]
    if not names:  # a user's own YAML with none of the mode's names: use all of it
        names = list(available)
    missing = [n for n in names if n not in available]
    if missing:
        raise ConscienceError(f"unknown framing(s) {missing}; available: {sorted(available)}")
    return [available[n] for n in names]


def cached_card_dir(identity: str) -> Path:
    """Where a card fitted on first use for ``identity``'s base weights is kept."""
    digest = hashlib.sha256(base_identity(identity).encode()).hexdigest()[:16]
    return Path(cache_root()) / "cards" / digest


def available_card(cfg: ConscienceConfig, judge: LoadedModel) -> Path | None:
    """A card that exists already: ``--conscience-card``; the card inside the adapter or model
    folder, only with ``trust_adapter_card``; the shipped one for ``bundled``; or one fitted
    earlier and cached."""
    folder = find_card(cfg.model, cfg.adapter, cfg.conscience_card, cfg.trust_adapter_card)
    if folder is None and (cached_card_dir(judge.identity) / "conscience_card.json").is_file():
        folder = cached_card_dir(judge.identity)
    return folder


def check_chosen_card(cfg: ConscienceConfig) -> None:
    """Load the card the user chose (named, or trusted in the adapter or model folder) and its
    code/ card: one that does not load, or is degenerate, is a one-line error now — each command
    calls this before any model loads — never a silent fall back to another verdict."""
    folder, key = cfg.conscience_card, "conscience_card"
    if folder is None and cfg.trust_adapter_card:
        folder, key = weights_card(cfg.model, cfg.adapter), "trust_adapter_card"
    if folder is None:
        return
    try:
        for card in (folder, find_code_card(folder)):
            if card is not None:
                load_card(card)
    except ConscienceError as exc:
        raise ConscienceError(f"{key}: {exc}") from None


def usable_card(cfg: ConscienceConfig, judge: LoadedModel) -> Path | None:
    """:func:`available_card`, if it was fitted for ``judge``'s weights.

    A card that does not load is an error, whichever it is: never a silent fall back to another
    verdict. One fitted for other weights is an error too when the user chose it (named, or
    trusted inside the adapter or model folder); the shipped card for ``bundled`` read by another
    judge is passed over (the caller reports the verbal verdict it uses instead)."""
    folder = available_card(cfg, judge)
    if folder is None:
        return None
    card = load_card(folder)
    if cfg.conscience_card or folder == weights_card(cfg.model, cfg.adapter):
        check_card(card, judge.identity, *model_shape(judge), f"conscience card {folder}")
        return folder
    try:
        check_card(card, judge.identity, *model_shape(judge), str(folder))
    except ConscienceError:
        return None
    return folder


def untrusted_card_note(cfg: ConscienceConfig) -> str:
    """``; a card inside ... was not used (...)``, when a card came with the weights and the user
    did not trust it (a card named explicitly replaces it anyway)."""
    folder = None if cfg.trust_adapter_card or cfg.conscience_card else weights_card(cfg.model, cfg.adapter)
    if folder is None:
        return ""
    return (f"; the conscience card in {folder} was not used: a card that comes with the weights is used only "
            "with --trust-adapter-card (or name it with --conscience-card)")


def build_latent_reviewer(cfg: ConscienceConfig, judge: LoadedModel, verbal: VerbalReviewer,
                          folder: Path | None = None) -> ReviewerChoice:
    """The latent or combined reviewer a config asks for, with its card found automatically
    (:func:`available_card`, unless ``folder`` is given), or fitted on the shipped contrast data on
    first use (then cached)."""
    folder = folder or available_card(cfg, judge)
    reason = f"{cfg.verdict} verdict: conscience card {folder}"
    if folder is None:
        folder = cached_card_dir(judge.identity)
        reason = f"{cfg.verdict} verdict: conscience card {folder}"
        if not (folder / "conscience_card.json").is_file():
            from ..framings import data_path
            from .calibration import fit_card_on_data  # minutes of work: only on first use

            fit_card_on_data(judge, data_path("contrast.jsonl"), folder)
            reason = (f"{cfg.verdict} verdict: no conscience card for {judge.identity}, so one was fitted on the "
                      f"shipped contrast data (one time, cached in {folder})")
    reviewer = card_reviewer(judge, folder, verbal, combined=cfg.verdict == "combined", threshold=cfg.threshold)
    if isinstance(reviewer, CodeRoutedReviewer):
        reason += f"; answers with code: conscience card {find_code_card(folder)}"
    if recall_target(cfg.threshold) is not None:
        reason += f"; threshold {cfg.threshold} is {reviewer.threshold:.4g}"
    return ReviewerChoice(reviewer, reason)


def card_reviewer(judge: LoadedModel, folder: Path, verbal: VerbalReviewer | None = None, *, combined: bool = False,
                  threshold: float | str = 0.5) -> LatentReviewer | CodeRoutedReviewer:
    """The latent (or ``combined``) reviewer of the card in ``folder``, routed with its ``code/``
    card when it has one (:mod:`.code_route`). ``threshold`` is a number or ``recall:X``, which
    each card resolves from its own cross-validation."""
    cls = CombinedReviewer if combined else LatentReviewer
    target = recall_target(threshold)
    reviewers = []
    for sub in (folder, find_code_card(folder)):
        if sub is None:
            continue
        source = f"conscience card {sub}"
        card = load_card(sub)
        check_card(card, judge.identity, *model_shape(judge), source)  # directions of other weights mean nothing
        reviewer = cls(judge, card, verbal, threshold=0.5 if target is not None else threshold, source=source)
        if target is not None:  # recall:X is read from the card's own cross-validation
            reviewer.threshold = threshold_for_recall(reviewer, target, source)
        reviewers.append(reviewer)
    return reviewers[0] if len(reviewers) == 1 else CodeRoutedReviewer(*reviewers)


def choose_reviewer(cfg: ConscienceConfig, judge: LoadedModel,
                    framings: Sequence[Framing] | None = None) -> ReviewerChoice:
    """The verdict a config asks for (verbal, latent or combined; ``auto`` is latent where a
    card fits the model, else verbal), with the reason for the choice."""
    framings = list(framings) if framings is not None else resolve_framings(cfg)
    target = recall_target(cfg.threshold)  # recall:X needs a card; ConscienceConfig refuses it with verbal
    verbal = VerbalReviewer(judge, framings, threshold=0.5 if target is not None else cfg.threshold,
                            review_format=cfg.review_format)
    if cfg.verdict == "verbal":
        return ReviewerChoice(verbal, "verbal verdict: asked for")
    choice = _latent_or_verbal(cfg, judge, verbal, target)
    return ReviewerChoice(choice.reviewer, choice.reason + untrusted_card_note(cfg))


def _latent_or_verbal(cfg: ConscienceConfig, judge: LoadedModel, verbal: VerbalReviewer,
                      target: float | None) -> ReviewerChoice:
    """``auto``: the latent verdict where a card fits the judge, else the verbal one; ``latent`` or
    ``combined``: that verdict, its card fitted on first use where there is none."""
    folder = None
    if cfg.verdict == "auto":
        folder = usable_card(cfg, judge)
        if folder is None and target is not None:
            raise ConscienceError(f"threshold {cfg.threshold} needs a conscience card, and there is none for "
                                  f"{judge.identity}: give a number, or fit a card with `conscience calibrate`")
        if folder is None:  # fitting one takes minutes: the user asks for it
            return ReviewerChoice(verbal, f"no conscience card for {judge.identity}: using the verbal verdict "
                                          "(`conscience calibrate` fits one; --verdict latent fits it on first use)")
        cfg = replace(cfg, verdict="latent")
    return build_latent_reviewer(cfg, judge, verbal, folder)


def make_reviewer(cfg: ConscienceConfig, judge: LoadedModel, framings: Sequence[Framing] | None = None) -> Reviewer:
    """:func:`choose_reviewer`'s reviewer, for callers that do not report why."""
    return choose_reviewer(cfg, judge, framings).reviewer
