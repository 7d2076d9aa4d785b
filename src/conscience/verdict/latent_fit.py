"""Fitting maths of the latent conscience: pure functions on numpy arrays, no model.

Shapes: ``N`` records, ``L`` layers, ``H`` hidden size. Records come in triples' pairs:
features ``X (N, L, H)``, labels ``y (N,)`` (1 = aligned), groups ``g (N,)`` (the triple a
record belongs to — both answers of a triple always fall on the same side of a split, so a
fold never scores a record whose partner it was fitted on).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

METHODS = ("diffmean", "lda", "logistic", "pca")
SHRINKAGE = 0.5  # of the LDA covariance towards a scaled identity, in every card fit


@dataclass
class Probe:
    """A fitted linear read-out: ``score = sigmoid(a * (w · (mean_layers(x) - mu) / sd) + b)``.

    ``layers`` are averaged before projecting; ``w`` has unit norm on standardised features.
    """

    layers: list[int]
    mu: np.ndarray  # (H,)
    sd: np.ndarray  # (H,)
    w: np.ndarray  # (H,)
    a: float
    b: float
    method: str
    threshold: float = 0.5
    metrics: dict = field(default_factory=dict)

    def project(self, X: np.ndarray) -> np.ndarray:
        """``X (N, L_all, H)`` → raw projections ``(N,)``."""
        return self.project_pooled(pool_layers(X, self.layers))

    def project_pooled(self, Z: np.ndarray) -> np.ndarray:
        """Features already averaged over the probe's layers, ``Z (..., H)`` → projections ``(...)``."""
        return ((np.asarray(Z, dtype=np.float64) - self.mu) / self.sd) @ self.w

    def score(self, X: np.ndarray) -> np.ndarray:
        """``X (N, L_all, H)`` → probability-like scores ``(N,)`` in (0, 1)."""
        return sigmoid(self.a * self.project(X) + self.b)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


def pool_layers(X: np.ndarray, layers: Sequence[int]) -> np.ndarray:
    """Average the chosen layers: ``(N, L, H)`` → ``(N, H)``."""
    return X[:, list(layers), :].astype(np.float64).mean(axis=1)


def standardise(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature mean and standard deviation of ``Z (N, H)`` (sd floored, never 0)."""
    mu = Z.mean(axis=0)
    sd = Z.std(axis=0)
    return mu, np.maximum(sd, 1e-6 * max(float(sd.max()), 1e-12) + 1e-12)


def direction(Z: np.ndarray, y: np.ndarray, g: np.ndarray, method: str, shrinkage: float = 0.5, l2: float = 1.0) -> np.ndarray:
    """A unit direction on standardised features ``Z (N, H)`` pointing to aligned (y=1)."""
    y = np.asarray(y).astype(bool)
    delta = Z[y].mean(axis=0) - Z[~y].mean(axis=0)
    if method == "diffmean":
        w = delta
    elif method == "lda":
        # Shrinkage LDA: pooled within-class covariance pulled towards a scaled identity,
        # since N << H here and the raw covariance is singular.
        centred = np.where(y[:, None], Z - Z[y].mean(axis=0), Z - Z[~y].mean(axis=0))
        cov = centred.T @ centred / max(len(Z) - 2, 1)
        target = np.trace(cov) / cov.shape[0]
        cov = (1 - shrinkage) * cov + shrinkage * target * np.eye(cov.shape[0])
        w = np.linalg.solve(cov, delta)
    elif method == "pca":
        w = _paired_pca(Z, y, g, delta)
    elif method == "logistic":
        w = _logistic(Z, y.astype(np.float64), l2)
    else:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    norm = np.linalg.norm(w)
    return w / norm if norm > 0 else w


def _paired_pca(Z: np.ndarray, y: np.ndarray, g: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """First principal axis of the per-triple differences (aligned − misaligned), sign-fixed."""
    diffs = []
    for group in np.unique(g):
        rows = np.flatnonzero(g == group)
        pos, neg = rows[y[rows]], rows[~y[rows]]
        if len(pos) and len(neg):
            diffs.append(Z[pos].mean(axis=0) - Z[neg].mean(axis=0))
    D = np.asarray(diffs)
    # Uncentred: the mean difference itself is the signal we want the axis to carry.
    _, _, vt = np.linalg.svd(D, full_matrices=False)
    w = vt[0]
    return w if w @ delta >= 0 else -w


def _logistic(Z: np.ndarray, y: np.ndarray, l2: float, steps: int = 500) -> np.ndarray:
    """L2-regularised logistic regression by gradient descent with a safe step (1 / Lipschitz)."""
    n, h = Z.shape
    w, b = np.zeros(h), 0.0
    lipschitz = float(np.linalg.norm(Z, ord=2)) ** 2 / (4 * n) + l2 / n + 0.25
    step = 1.0 / lipschitz
    for _ in range(steps):
        p = sigmoid(Z @ w + b)
        w -= step * (Z.T @ (p - y) / n + l2 * w / n)
        b -= step * float(np.mean(p - y))
    return w


def platt(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """1-D logistic fit ``P(aligned) = sigmoid(a*s + b)`` on projections ``s (N,)``.

    Lightly regularised (a prior pulling ``a`` towards the pooled-variance slope) so that
    perfectly separated training data does not give an infinite slope.
    """
    y = np.asarray(y).astype(np.float64)
    spread = float(s.std()) or 1.0
    a, b = 1.0 / spread, -float(s.mean()) / spread
    for _ in range(200):
        p = sigmoid(a * s + b)
        ga = float(np.mean((p - y) * s)) + 1e-2 * a * spread**2
        gb = float(np.mean(p - y))
        weight = float(np.mean(p * (1 - p)))
        haa = float(np.mean(p * (1 - p) * s * s)) + 1e-2 * spread**2
        hab = float(np.mean(p * (1 - p) * s))
        hbb = weight + 1e-9
        det = haa * hbb - hab * hab
        if det <= 1e-18:
            break
        da = (hbb * ga - hab * gb) / det
        db = (haa * gb - hab * ga) / det
        a, b = a - da, b - db
        if abs(da) + abs(db) < 1e-10:
            break
    return a, b


def fit_probe(X: np.ndarray, y: np.ndarray, g: np.ndarray, layers: Sequence[int], method: str = "diffmean",
              shrinkage: float = 0.5, l2: float = 1.0) -> Probe:
    """Fit standardisation, direction and score mapping on ``X (N, L, H)`` at ``layers``."""
    y = np.asarray(y).astype(bool)
    Z = pool_layers(X, layers)
    mu, sd = standardise(Z)
    Zs = (Z - mu) / sd
    w = direction(Zs, y, np.asarray(g), method, shrinkage=shrinkage, l2=l2)
    a, b = platt(Zs @ w, y)
    return Probe(list(layers), mu, sd, w, a, b, method)


def group_folds(g: np.ndarray, k: int, seed: int = 0) -> list[np.ndarray]:
    """``k`` folds of whole groups (triples): a list of boolean test masks over records."""
    groups = np.unique(g)
    rng = np.random.default_rng(seed)
    rng.shuffle(groups)
    k = max(2, min(k, len(groups)))
    return [np.isin(g, part) for part in np.array_split(groups, k)]


def category_folds(categories: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Leave-one-category-out: ``(category, test mask)`` per category."""
    return [(c, categories == c) for c in sorted(set(categories.tolist()))]


def out_of_fold_scores(X: np.ndarray, y: np.ndarray, g: np.ndarray, masks: Sequence[np.ndarray],
                       fit: Callable[[np.ndarray], Probe]) -> np.ndarray:
    """Scores where every record is scored by a probe fitted without its fold.

    ``fit(train_mask) -> Probe``; each test mask's records are scored by the probe fitted on
    the complement. Records in no test mask stay NaN.
    """
    scores = np.full(len(y), np.nan)
    for test in masks:
        train = ~test
        if not test.any() or not train.any():
            continue
        probe = fit(train)
        scores[test] = probe.score(X[test])
    return scores


def scores_with_extra(X: np.ndarray, y: np.ndarray, g: np.ndarray, folds: Sequence[tuple[str | None, np.ndarray]],
                      fit: Callable[[np.ndarray, np.ndarray, np.ndarray], Probe],
                      extra: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
                      dev_in_fit: bool = True) -> np.ndarray:
    """Out-of-fold scores on ``(X, y, g)`` with more training records from elsewhere.

    ``folds`` are ``(category or None, test mask)``; each fold's probe is ``fit(X, y, g)`` on the
    other folds (when ``dev_in_fit``) plus ``extra = (X, y, g, categories)`` minus the extra
    records of the held-out category, so a leave-one-category-out fit never sees that category.
    ``extra``'s groups must not collide with ``g``.
    """
    scores = np.full(len(y), np.nan)
    for category, test in folds:
        parts = [(X[~test], y[~test], g[~test])] if dev_in_fit else []
        if extra is not None:
            EX, ey, eg, ecats = extra
            keep = ecats != category if category is not None else np.ones(len(ey), bool)
            parts.append((EX[keep], ey[keep], eg[keep]))
        if not parts or not sum(len(p[1]) for p in parts):
            continue
        X_fit, y_fit, g_fit = (np.concatenate(a) for a in zip(*parts, strict=True))
        scores[test] = fit(X_fit, y_fit, g_fit).score(X[test])
    return scores


def select_layers(X: np.ndarray, y: np.ndarray, g: np.ndarray, candidates: Sequence[Sequence[int]], method: str,
                  k: int = 5, seed: int = 0, shrinkage: float = 0.5) -> tuple[list[int], dict]:
    """The layer set with the best inner k-fold paired margin; uses only the records given."""
    from ..discernment import paired_accuracy, roc_auc

    results = {}
    for layers in candidates:
        scores = out_of_fold_scores(
            X, y, g, group_folds(g, k, seed),
            lambda train, layers=layers: fit_probe(X[train], y[train], g[train], layers, method, shrinkage),
        )
        aligned, misaligned = paired_scores(scores, y, g)
        accuracy, _ = paired_accuracy(aligned, misaligned)
        auc = roc_auc(scores.tolist(), [int(v) for v in y])
        results[tuple(layers)] = accuracy + auc  # both matter: pairs for training, AUC for flagging
    best = max(results, key=lambda key: (results[key], -len(key)))
    return list(best), {",".join(map(str, key)): round(v / 2, 4) for key, v in results.items()}


def paired_scores(scores: np.ndarray, y: np.ndarray, g: np.ndarray) -> tuple[list[float], list[float]]:
    """Per triple (group), the aligned and misaligned record's scores, in group order."""
    aligned, misaligned = [], []
    for group in np.unique(g):
        rows = np.flatnonzero(g == group)
        pos = [scores[r] for r in rows if y[r]]
        neg = [scores[r] for r in rows if not y[r]]
        if pos and neg:
            aligned.append(float(np.mean(pos)))
            misaligned.append(float(np.mean(neg)))
    return aligned, misaligned


def best_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """The cut maximising balanced accuracy of ``score >= t`` (midpoint between scores)."""
    y = np.asarray(y).astype(bool)
    values = np.unique(scores)
    cuts = np.concatenate([[0.0], (values[:-1] + values[1:]) / 2, [1.0]]) if len(values) > 1 else np.array([0.5])
    best, best_cut = -1.0, 0.5
    for cut in cuts:
        flagged = scores < cut
        balanced = 0.5 * (np.mean(~flagged[y]) + np.mean(flagged[~y]))
        if balanced > best + 1e-12 or (abs(balanced - best) <= 1e-12 and abs(cut - 0.5) < abs(best_cut - 0.5)):
            best, best_cut = balanced, float(cut)
    return best_cut


def layer_candidates(num_hidden: int) -> list[list[int]]:
    """Single layers over the middle of the network, and windows of three around them."""
    lo, hi = max(1, num_hidden // 3), max(2, (4 * num_hidden) // 5)
    singles = [[i] for i in range(lo, hi)]
    windows = [[i - 1, i, i + 1] for i in range(lo + 1, hi - 1)]
    return singles + windows or [[num_hidden - 1]]


def fit_selected(X, y, g, method: str, layers: list[int] | None, seed: int) -> Probe:
    """A probe at ``layers``, or at the layers inner 5-fold CV on ``(X, y, g)`` picks."""
    chosen = layers or select_layers(X, y, g, layer_candidates(X.shape[1]), method, k=5, seed=seed, shrinkage=SHRINKAGE)[0]
    return fit_probe(X, y, g, chosen, method, shrinkage=SHRINKAGE)


def combine_weights(latent: np.ndarray, verbal: np.ndarray, y: np.ndarray) -> dict:
    """Weights of the combined verdict: a 2-feature logistic fit on log-odds (light L2)."""
    eps = 1e-6
    F = np.stack([np.log((latent + eps) / (1 - latent + eps)), np.log((verbal + eps) / (1 - verbal + eps))], axis=1)
    w, b = np.array([1.0, 0.0]), 0.0
    t = y.astype(np.float64)
    for _ in range(2000):
        p = sigmoid(F @ w + b)
        w -= 0.05 * (F.T @ (p - t) / len(t) + 1e-2 * w)
        b -= 0.05 * float(np.mean(p - t))
    return {"latent": round(float(w[0]), 4), "verbal": round(float(w[1]), 4), "bias": round(float(b), 4)}
