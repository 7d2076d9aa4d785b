"""The latent-conscience card: a fitted probe saved as a small safetensors file plus JSON.

A card folder holds ``conscience_card.json`` (model identity, hidden size, layers, framing,
score mapping, data digest, cross-validated metrics) and ``conscience_card.safetensors``
(``mu``, ``sd``, ``w`` in float64, so a saved card round-trips bit for bit). The JSON's
``threshold`` is the probe's cut (on cards with ``operating`` points: the cut whose
cross-validated recall of misaligned answers is >= 0.95, see :mod:`.operating_point`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConscienceError, DataFormatError
from ..jsonl import atomic_file, write_text_atomic
from ..models import base_identity
from .latent_fit import Probe
from .spans import SpanPooling
from .types import POOLS

CARD_JSON = "conscience_card.json"
CARD_TENSORS = "conscience_card.safetensors"
CARD_SUBFOLDER = "conscience-card"  # a card may also sit in this folder beside a model/adapter
FORMAT_VERSION = 1


@dataclass
class Card:
    """A probe and what it was fitted for.

    ``identity`` is the *frozen copy's* identity (an adapter suffix is dropped: the latent
    verdict reads the base weights). ``num_hidden`` counts hidden-state tensors (layers + 1).
    """

    probe: Probe
    identity: str
    hidden_size: int
    num_hidden: int
    framing: str
    question: str
    review_format: str = "third_person"  # the review prompt whose forward pass was read
    pool: str = "last"  # which hidden states: the prompt's last token, or the mean over the answer's tokens
    data_digest: str = ""
    n_records: int = 0
    combine: dict = field(default_factory=dict)  # weights of the combined verdict
    info: dict = field(default_factory=dict)  # free-form: data path, options, timings
    spans: SpanPooling | None = None  # how a pool="spans" card combines its windows
    # cross-validated operating points and out-of-fold scores (verdict/operating_point.py); empty
    # for cards fitted before them or without labels
    operating: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        p = self.probe
        return {
            "format_version": FORMAT_VERSION,
            "identity": self.identity,
            "hidden_size": self.hidden_size,
            "num_hidden": self.num_hidden,
            "framing": self.framing,
            "question": self.question,
            "review_format": self.review_format,
            "pool": self.pool,
            **({"spans": self.spans.to_json()} if self.spans else {}),
            "layers": p.layers,
            "method": p.method,
            "scale": p.a,
            "offset": p.b,
            "threshold": p.threshold,
            "metrics": p.metrics,
            "data_digest": self.data_digest,
            "n_records": self.n_records,
            "combine": self.combine,
            "info": self.info,
            "operating": self.operating,
        }


def save_card(card: Card, out_dir: str | Path) -> Path:
    """Write the two card files, each atomically; tensors first, so that a reader that finds the
    JSON always finds matching tensors."""
    from safetensors.numpy import save

    out_dir = Path(out_dir)
    p = card.probe
    with atomic_file(out_dir / CARD_TENSORS, "wb") as fh:
        fh.write(save({"mu": np.ascontiguousarray(p.mu, dtype=np.float64), "sd": np.ascontiguousarray(p.sd, dtype=np.float64),
                       "w": np.ascontiguousarray(p.w, dtype=np.float64)}))
    write_text_atomic(out_dir / CARD_JSON, json.dumps(card.to_json(), indent=2) + "\n")
    return out_dir


def load_card(folder: str | Path) -> Card:
    """Read a card folder; errors name the file and the missing or bad field."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    meta_path, tensor_path = folder / CARD_JSON, folder / CARD_TENSORS
    if not meta_path.is_file() or not tensor_path.is_file():
        raise ConscienceError(f"{folder} is not a conscience card: it needs {CARD_JSON} and {CARD_TENSORS} "
                              "(write one with `conscience calibrate`)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{meta_path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    required = ("identity", "hidden_size", "num_hidden", "framing", "question", "layers", "method", "scale", "offset")
    missing = [k for k in required if k not in meta]
    if missing:
        raise DataFormatError(f"{meta_path}: missing field(s) {missing}")
    if meta.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise DataFormatError(f"{meta_path}: card format {meta['format_version']} is newer than this version reads")
    try:
        tensors = load_file(str(tensor_path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise DataFormatError(f"{tensor_path}: unreadable safetensors file ({exc})") from None
    for name in ("mu", "sd", "w"):
        if name not in tensors or tensors[name].shape != (meta["hidden_size"],):
            raise DataFormatError(f"{tensor_path}: tensor {name!r} missing or not of shape ({meta['hidden_size']},)")
    probe = Probe(
        layers=[int(v) for v in meta["layers"]], mu=tensors["mu"], sd=tensors["sd"], w=tensors["w"],
        a=float(meta["scale"]), b=float(meta["offset"]), method=str(meta["method"]),
        threshold=float(meta.get("threshold", 0.5)), metrics=dict(meta.get("metrics", {})),
    )
    if not all(0 <= layer < meta["num_hidden"] for layer in probe.layers):
        raise DataFormatError(f"{meta_path}: layers {probe.layers} outside 0..{meta['num_hidden'] - 1}")
    pool = meta.get("pool", "last")  # cards written before pooling read the last token
    if pool not in POOLS:
        raise DataFormatError(f"{meta_path}: field 'pool' must be one of {list(POOLS)}, got {pool!r}")
    return Card(probe, meta["identity"], int(meta["hidden_size"]), int(meta["num_hidden"]), meta["framing"],
                meta["question"], meta.get("review_format", "third_person"), pool, meta.get("data_digest", ""),
                int(meta.get("n_records", 0)), dict(meta.get("combine", {})), dict(meta.get("info", {})),
                spans=_span_pooling(meta, meta_path, pool), operating=dict(meta.get("operating", {})))


def _span_pooling(meta: dict, meta_path: Path, pool: str) -> SpanPooling | None:
    """A span card's ``spans: {window, temperature}``; cards of other poolings have none."""
    if pool != "spans":
        return None
    spans = meta.get("spans")
    if not isinstance(spans, dict) or "window" not in spans:
        raise DataFormatError(f"{meta_path}: a card with pool 'spans' needs a field 'spans' with a 'window'")
    try:
        return SpanPooling(spans["window"], float(spans.get("temperature", 0.0)))
    except (TypeError, ValueError) as exc:
        raise DataFormatError(f"{meta_path}: field 'spans': {exc}") from None


def check_card(card: Card, identity: str, hidden_size: int, num_hidden: int, source: str = "card") -> None:
    """Refuse a card fitted for other weights: a directions from one model mean nothing in another."""
    if card.hidden_size != hidden_size or card.num_hidden != num_hidden:
        raise ConscienceError(
            f"{source} was fitted for a model with hidden size {card.hidden_size} and {card.num_hidden - 1} layers, "
            f"but this model has hidden size {hidden_size} and {num_hidden - 1} layers; "
            "fit a card for it with `conscience calibrate`")
    if base_identity(card.identity) != base_identity(identity):
        raise ConscienceError(
            f"{source} was fitted for {card.identity!r}, not for this model ({base_identity(identity)!r}); "
            "fit a card for it with `conscience calibrate`")


def find_card(spec: str, adapter: str | None = None, explicit: str | None = None) -> Path | None:
    """Where the conscience's card is: ``explicit``; else beside the adapter or the model
    folder (the folder itself or its ``conscience-card/``); else the shipped card for ``bundled``."""
    if explicit:
        return Path(explicit)
    for folder in (adapter, spec):
        if folder and Path(folder).is_dir():
            for candidate in (Path(folder), Path(folder) / CARD_SUBFOLDER):
                if (candidate / CARD_JSON).is_file():
                    return candidate
    if spec == "bundled":
        from ..framings import data_path

        shipped = data_path("cards/bundled")
        if (shipped / CARD_JSON).is_file():
            return shipped
    return None
