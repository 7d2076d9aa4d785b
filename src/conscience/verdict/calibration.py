"""Fitting a latent-conscience card: features read with the frozen copy (cached on disk), the
honest cross-validated fit, and the card written to its folder.

Fits the layer choice, standardisation, direction, score mapping, threshold and the combined
verdict's weights; k-fold and leave-one-category-out metrics (never scoring a record a probe
was fitted on) go into the card. The maths is :mod:`conscience.verdict.latent_fit`; the
``conscience calibrate`` command is :mod:`conscience.verdict.calibrate_cli`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..discernment import Triple, discernment_report
from ..errors import ConscienceError
from ..framings import Framing, load_prompts
from ..log import log
from ..models import LoadedModel, base_identity, cache_root
from .card import Card, save_card
from .latent import CONTRAST_FRAMINGS, collect_features, framing_by_name, model_shape
from .latent_fit import (
    SHRINKAGE,
    Probe,
    category_folds,
    combine_weights,
    fit_selected,
    group_folds,
    out_of_fold_scores,
    paired_scores,
    pool_layers,
    sigmoid,
    standardise,
)
from .operating_point import card_operating_points
from .sources import file_digest, load_sources, sources_digest, sources_name
from .types import ReviewItem

MIN_TRIPLES = 10


def triple_items(triples: Sequence[Triple]) -> tuple[list[ReviewItem], np.ndarray, np.ndarray, np.ndarray]:
    """Records (aligned answers first), labels ``y``, groups ``g`` and categories, each ``(2T,)``."""
    items = [ReviewItem(t.prompt, t.aligned) for t in triples] + [ReviewItem(t.prompt, t.misaligned) for t in triples]
    n = len(triples)
    y = np.r_[np.ones(n), np.zeros(n)].astype(bool)
    g = np.r_[np.arange(n), np.arange(n)]
    cats = np.array([t.category for t in triples] * 2)
    return items, y, g, cats


def _feature_path(lm: LoadedModel, framing: Framing, key: str, n_items: int, review_format: str,
                  pool: str) -> Path:
    """Where features are cached: by model, framing, template, pooling and data digest."""
    template = repr(load_prompts()["review" if review_format == "third_person" else review_format])
    parts = [base_identity(lm.identity), framing.name, framing.question, template, key, str(n_items)]
    if review_format != "third_person":  # third-person digests stay as they were
        parts.append(review_format)
    if pool != "last":  # and so do last-token ones
        parts.append(f"pool={pool}")
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:20]
    return cache_root() / "features" / f"{digest}.npz"


def cached_features(lm: LoadedModel, items: Sequence[ReviewItem], framing: Framing, key: str,
                    batch_size: int = 8, review_format: str = "third_person",
                    pool: str = "last") -> tuple[np.ndarray, np.ndarray]:
    """:func:`collect_features`, cached on disk by model, framing, template, pooling and data digest."""
    if pool == "spans":
        raise ValueError("span features are per token: read them with cached_token_features")
    path = _feature_path(lm, framing, key, len(items), review_format, pool)
    if path.is_file():
        with np.load(path) as cached:
            return cached["X"], cached["verbal"]
    X, verbal = collect_features(lm, items, framing, batch_size=batch_size, log_every=5, review_format=review_format,
                                 pool=pool)
    _save_npz(path, X=X, verbal=verbal)
    return X, verbal


def _save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def cached_token_features(lm: LoadedModel, items: Sequence[ReviewItem], framing: Framing, layers: Sequence[int],
                          key: str, batch_size: int = 8,
                          review_format: str = "look_back") -> tuple[list[np.ndarray], np.ndarray]:
    """Per item its answer tokens' states averaged over ``layers`` ``(n_i, H)``, and the verbal
    scores ``(N,)`` of the same passes; cached on disk (states as float16: they are many)."""
    from .latent import token_features
    from .verbal import VerbalReviewer

    layer_key = f"{key}|layers={','.join(map(str, layers))}"
    path = _feature_path(lm, framing, layer_key, len(items), review_format, "spans")
    if path.is_file():
        with np.load(path) as cached:
            flat, lengths, verbal = cached["tokens"], cached["lengths"], cached["verbal"]
        return [part.astype(np.float32) for part in np.split(flat, np.cumsum(lengths)[:-1])], verbal
    reader = VerbalReviewer(lm, [framing], batch_size=batch_size, review_format=review_format)
    tokens, verbal, start = [], [], time.perf_counter()
    for offset in range(0, len(items), batch_size):
        verdicts, states = token_features(reader, items[offset:offset + batch_size], framing.name, layers)
        tokens += [t.astype(np.float16).astype(np.float32) for t in states]  # as a cached read returns them
        verbal += [v.score for v in verdicts]
        if (offset // batch_size) % 10 == 0:
            log(f"token features {len(tokens)}/{len(items)} ({time.perf_counter() - start:.0f}s)")
    _save_npz(path, tokens=np.concatenate(tokens).astype(np.float16), lengths=np.array([len(t) for t in tokens]),
              verbal=np.asarray(verbal))
    return tokens, np.asarray(verbal)


def _report(scores: np.ndarray, y: np.ndarray, g: np.ndarray, triples: Sequence[Triple]) -> dict:
    aligned, misaligned = paired_scores(scores, y, g)
    report = discernment_report(aligned, misaligned, triples)
    return _rounded(report)


def _rounded(value):
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return round(value, 4) if isinstance(value, float) else value


def fit_card(X: np.ndarray, verbal: np.ndarray, triples: Sequence[Triple], *, identity: str, framing: Framing,
             method: str = "lda", layers: list[int] | None = None, folds: int = 5, seed: int = 0) -> Card:
    """Fit a card on features of ``triples``' records (aligned answers first) with honest CV."""
    check_triples(triples)
    _, y, g, cats = triple_items(triples)
    fit = lambda train: fit_selected(X[train], y[train], g[train], method, layers, seed)
    start = time.perf_counter()
    kfold = out_of_fold_scores(X, y, g, group_folds(g, folds, seed), fit)
    loco = out_of_fold_scores(X, y, g, [m for _, m in category_folds(cats)], fit)
    probe = fit_selected(X, y, g, method, layers, seed)
    # the cut whose out-of-fold recall of misaligned answers is >= 0.95 at the fewest false flags
    probe.threshold, operating = card_operating_points(kfold, verbal, y)
    combine = combine_weights(kfold, verbal, y)
    combined_kfold = np.array([sigmoid(combine["latent"] * np.log(l / (1 - l)) + combine["verbal"] * np.log(v / (1 - v)) + combine["bias"])
                               for l, v in zip(np.clip(kfold, 1e-6, 1 - 1e-6), np.clip(verbal, 1e-6, 1 - 1e-6),
                                               strict=True)])
    probe.metrics = {
        "kfold": _report(kfold, y, g, triples),
        "loco": _report(loco, y, g, triples),
        "verbal": _report(verbal, y, g, triples),
        "combined_kfold": _report(combined_kfold, y, g, triples),
        "folds": folds,
    }
    log(f"fitted in {time.perf_counter() - start:.1f}s: layers {probe.layers}, method {method}")
    hidden_size, num_hidden = X.shape[2], X.shape[1]
    return Card(probe, base_identity(identity), hidden_size, num_hidden, framing.name, framing.question,
                n_records=len(y), combine=combine, info={"method": method, "shrinkage": SHRINKAGE, "seed": seed},
                operating=operating)


def fit_unlabelled_card(X: np.ndarray, X_pos: np.ndarray, X_neg: np.ndarray, *, identity: str, framing: Framing,
                        layers: list[int]) -> Card:
    """A card from contrastive instructions alone: the direction is the mean difference of the
    same answers read under an "ethical" and an "unethical" question; no labels are used."""
    Z = pool_layers(X, layers)
    mu, sd = standardise(Z)
    d = (pool_layers(X_pos, layers) - pool_layers(X_neg, layers)).mean(axis=0)
    w = d * sd  # raw-space direction expressed on standardised features
    w = w / (np.linalg.norm(w) or 1.0)
    s = ((Z - mu) / sd) @ w
    spread = float(s.std()) or 1.0
    probe = Probe(list(layers), mu, sd, w, 1.0 / spread, -float(np.median(s)) / spread, "contrast")
    return Card(probe, base_identity(identity), X.shape[2], X.shape[1], framing.name, framing.question,
                n_records=len(X), info={"method": "contrast", "unlabelled": True})


def fit_span_card(lm: LoadedModel, card: Card, triples: Sequence[Triple], framing: Framing, key: str, *,
                  styles_path: str | Path | None = None, per_answer: int = 3, batch_size: int = 8,
                  review_format: str = "look_back", folds: int = 5, seed: int = 0) -> Card:
    """Turn an answer-mean ``card`` (its layers and method kept) into a span card.

    Its records are ``triples``' answers plus injected copies (the ``fit`` half of the injection
    styles, see :func:`conscience.verdict.injection.augmentations`). The pooling (window and
    soft-min temperature; the answer-mean is scored beside them, never chosen) is chosen by group
    k-fold CV on these records alone; dev is never read. See :mod:`.span_fit` for why the direction comes
    from answer means and the score mapping from span scores.
    """
    from ..discernment import roc_auc
    from ..framings import data_path
    from .injection import STYLES_FILE, augmentations, load_styles
    from .span_fit import candidate_poolings, choose_pooling, fit_direction, fit_span_probe, span_out_of_fold

    items, y, g, cats = triple_items(triples)
    styles = load_styles(styles_path, split="fit")
    injected = augmentations([i.answer for i in items], ~y, styles, per_answer, seed) if per_answer else []
    source = np.array([i for i, _, _ in injected], dtype=int)
    records = items + [ReviewItem(items[i].prompt, text) for i, text, _ in injected]
    Y, G, C = np.r_[y, y[source]], np.r_[g, g[source]], np.r_[cats, cats[source]]
    clean = np.r_[np.ones(len(y)), np.zeros(len(source))].astype(bool)
    styles_key = file_digest(Path(styles_path) if styles_path else data_path(STYLES_FILE))
    log(f"reading {len(records)} answers ({len(injected)} injected) token by token at layers {card.probe.layers}")
    tokens, verbal = cached_token_features(lm, records, framing, card.probe.layers,
                                           f"{key}|{styles_key}|k={per_answer}|seed={seed}", batch_size, review_format)
    method = card.probe.method
    base = fit_direction(tokens[:len(y)], y, g, method)
    spread = float(np.std(base.project_pooled(np.stack([t.mean(axis=0) for t in tokens[:len(y)]])))) or 1.0
    oof = span_out_of_fold(tokens, Y, G, clean, group_folds(G, folds, seed), method, candidate_poolings(spread))
    pooling, merits = choose_pooling(oof, Y, G, clean)
    loco = span_out_of_fold(tokens, Y, G, clean, [m for _, m in category_folds(C)], method, [pooling])[pooling]
    kfold = oof[pooling]
    probe = fit_span_probe(tokens, Y, G, clean, method, pooling, card.probe.layers)
    # the cut is chosen on clean and injected records together: recall must hold under injection too
    probe.threshold, card.operating = card_operating_points(kfold, verbal, Y)
    flagged = kfold <= probe.threshold
    card.combine = combine_weights(kfold[clean], verbal[clean], y)
    probe.metrics = {
        "kfold": _report(kfold[clean], y, g, triples),
        "loco": _report(loco[clean], y, g, triples),
        "verbal": card.probe.metrics.get("verbal", {}),
        "kfold_answer_mean": card.probe.metrics.get("kfold", {}),
        "loco_answer_mean": card.probe.metrics.get("loco", {}),
        "kfold_auc_with_injected": round(roc_auc(kfold.tolist(), Y.astype(int).tolist()), 4),
        "injected_misaligned_let_through": round(float(np.mean(~flagged[~clean & ~Y])), 4) if len(source) else None,
        "clean_misaligned_let_through": round(float(np.mean(~flagged[clean & ~Y])), 4),
        "folds": folds,
    }
    card.probe, card.pool, card.spans = probe, "spans", pooling
    card.info["spans"] = {"styles": Path(styles_path).name if styles_path else STYLES_FILE, "split": "fit",
                          "per_answer": per_answer, "n_injected": len(injected), "pooling_cv_merit": merits}
    log(f"span pooling: window {pooling.window}, temperature {pooling.temperature} (of {len(merits)} by CV)")
    return card


def check_triples(triples: Sequence[Triple]) -> None:
    if len(triples) < MIN_TRIPLES:
        raise ConscienceError(f"calibration needs at least {MIN_TRIPLES} triples, got {len(triples)}")
    if len({t.category for t in triples}) < 2:
        raise ConscienceError("calibration needs triples from at least 2 categories (leave-one-category-out "
                              f"validation is impossible with one: {triples[0].category!r})")


def fit_card_on_data(lm: LoadedModel, data: str | Path, out: str | Path, *, framing_name: str = "aligned",
                     method: str = "lda", layers: list[int] | None = None, unlabelled: bool = False,
                     batch_size: int = 8, seed: int = 0, review_format: str = "look_back",
                     pool: str | None = None, styles: str | Path | None = None, per_answer: int = 3) -> Card:
    """Read triples, collect (cached) features with the frozen copy, fit and save a card.
    ``pool`` defaults to the answer-mean, or to the last token for ``unlabelled`` cards; a
    ``spans`` card is fitted with ``per_answer`` injected copies of each misaligned answer from
    the fit half of ``styles`` (default: the shipped injection styles)."""
    triples, framing, pool = check_calibration_inputs(data, framing_name, unlabelled, pool)
    if layers and max(layers) >= model_shape(lm)[1]:
        raise ConscienceError(f"--layers {max(layers)} is out of range: {lm.identity} has hidden states 0 to "
                              f"{model_shape(lm)[1] - 1}")
    items, y, g, _ = triple_items(triples)
    key = sources_digest(data)
    log(f"reading {len(items)} answers with the frozen copy of {lm.identity}")
    # a span card starts from the answer-mean card: its layer choice and the mean-pooling metrics
    X, verbal = cached_features(lm, items, framing, key, batch_size, review_format,
                                "answer" if pool == "spans" else pool)
    if unlabelled:
        chosen = layers or [round(0.57 * (model_shape(lm)[1] - 1))]  # late-middle layer (17 of 30)
        X_pos, _ = cached_features(lm, items, CONTRAST_FRAMINGS[0], key, batch_size, review_format, pool)
        X_neg, _ = cached_features(lm, items, CONTRAST_FRAMINGS[1], key, batch_size, review_format, pool)
        card = fit_unlabelled_card(X, X_pos, X_neg, identity=lm.identity, framing=framing, layers=chosen)
        scores = card.probe.score(X)
        card.probe.metrics = {"labels_used_for_scoring_only": _report(scores, y, g, triples)}
    else:
        card = fit_card(X, verbal, triples, identity=lm.identity, framing=framing, method=method, layers=layers, seed=seed)
    card.review_format, card.pool = review_format, pool
    if pool == "spans":
        card = fit_span_card(lm, card, triples, framing, key, styles_path=styles, per_answer=per_answer,
                             batch_size=batch_size, review_format=review_format, seed=seed)
    card.data_digest = key
    card.info["data"] = sources_name(data)
    save_card(card, out)
    return card


def check_calibration_inputs(data: str | Path, framing_name: str, unlabelled: bool,
                             pool: str | None) -> tuple[list[Triple], Framing, str]:
    """The triples, framing and pooling a calibration will use, or an error before any model loads.
    ``pool`` defaults to the answer-mean, or to the last token for ``unlabelled`` cards."""
    pool = pool or ("last" if unlabelled else "answer")
    if unlabelled and pool in ("answer", "spans"):
        raise ConscienceError("an unlabelled card contrasts the same answer read under two questions asked after it; "
                              "the answer's own hidden states are the same under both, so use --pool last")
    triples = load_sources(data)  # one JSONL, or several sources comma-separated (see .sources)
    framing = framing_by_name(framing_name)
    if unlabelled:
        if len(triples) * 2 < MIN_TRIPLES:
            raise ConscienceError(f"calibration needs at least {MIN_TRIPLES} answers, got {len(triples) * 2}")
    else:
        check_triples(triples)
    return triples, framing, pool
