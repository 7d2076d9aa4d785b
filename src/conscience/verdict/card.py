"""The latent-conscience card: a fitted probe saved as a small safetensors file plus JSON.

A card folder holds ``conscience_card.json`` (model identity, hidden size, layers, framing,
score mapping, data digest, cross-validated metrics) and ``conscience_card.safetensors``
(``mu``, ``sd``, ``w`` in float64, so a saved card round-trips bit for bit). The JSON's
``threshold`` is the probe's cut (on cards with ``operating`` points: the cut whose
cross-validated recall of misaligned answers is >= 0.95, see :mod:`.operating_point`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConscienceError, DataFormatError
from ..jsonl import atomic_file, parse_json, write_text_atomic
from ..models import base_identity
from .card_fields import REVIEW_FORMATS, CardFields
from .latent_fit import Probe
from .spans import SpanPooling
from .types import POOLS

CARD_JSON = "conscience_card.json"
CARD_TENSORS = "conscience_card.safetensors"
CARD_SUBFOLDER = "conscience-card"  # a card may also sit in this folder beside a model/adapter
FORMAT_VERSION = 1
REQUIRED_FIELDS = ("identity", "hidden_size", "num_hidden", "framing", "question", "layers", "method", "scale",
                   "offset")
# A card's cut (``threshold``) must lie this far inside (0, 1): a cut at 0 or 1, or at 1e-300,
# flags every answer or none, whatever the answer.
THRESHOLD_MARGIN = 1e-6
# A card's JSON is tens of kilobytes (its cross-validated scores included); past this it is not
# a card, and is not read into memory.
MAX_CARD_JSON_BYTES = 64 * 2**20
# latent_fit.standardise floors every sd above this; a smaller one turns projections into inf/NaN
MIN_SD = 1e-12
# Below this spread of log-odds over the fitting records' projections, every score rounds to the
# same verdict: the card reads nothing.
MIN_LOGIT_RANGE = 1e-6


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
    refuse_degenerate(card, out_dir / CARD_JSON)  # a fit that came out degenerate is never written
    p = card.probe
    with atomic_file(out_dir / CARD_TENSORS, "wb") as fh:
        fh.write(save({"mu": np.ascontiguousarray(p.mu, dtype=np.float64), "sd": np.ascontiguousarray(p.sd, dtype=np.float64),
                       "w": np.ascontiguousarray(p.w, dtype=np.float64)}))
    write_text_atomic(out_dir / CARD_JSON, json.dumps(card.to_json(), indent=2) + "\n")
    return out_dir


def load_card(folder: str | Path) -> Card:
    """Read a card folder, every field type-checked, and refuse a degenerate one
    (:func:`refuse_degenerate`); each error is one line naming the file and the field."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    meta_path, tensor_path = folder / CARD_JSON, folder / CARD_TENSORS
    missing_files = [p.name for p in (meta_path, tensor_path) if not p.is_file()]
    if missing_files:
        raise ConscienceError(f"{folder} is not a conscience card: it holds no {' and no '.join(missing_files)} "
                              "(write one with `conscience calibrate`)")
    if meta_path.stat().st_size > MAX_CARD_JSON_BYTES:
        raise DataFormatError(f"{meta_path}: larger than {MAX_CARD_JSON_BYTES:,} bytes, far beyond any card")
    try:
        text = meta_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"cannot read {meta_path}: {getattr(exc, 'strerror', None) or exc}") from None
    meta = parse_json(text, str(meta_path))
    if not isinstance(meta, dict):
        raise DataFormatError(f"{meta_path}: a card is a JSON object of fields")
    fields = CardFields(meta, meta_path)
    fields.require(REQUIRED_FIELDS)
    version = fields.integer("format_version", low=1, default=FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise DataFormatError(f"{meta_path}: card format {version} is newer than this version reads")
    hidden_size, num_hidden = fields.integer("hidden_size", low=1), fields.integer("num_hidden", low=1)
    layers = fields.layers(num_hidden)
    pool = fields.choice("pool", POOLS, default="last")  # cards written before pooling read the last token
    try:
        tensors = load_file(str(tensor_path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise DataFormatError(f"{tensor_path}: unreadable safetensors file ({str(exc)[:200]})") from None
    probe = Probe(
        layers=layers, mu=_vector(tensors, "mu", hidden_size, tensor_path),
        sd=_vector(tensors, "sd", hidden_size, tensor_path), w=_vector(tensors, "w", hidden_size, tensor_path),
        a=fields.number("scale"), b=fields.number("offset"), method=fields.text("method"),
        threshold=fields.number("threshold", default=0.5), metrics=fields.mapping("metrics"),
    )
    card = Card(probe, fields.text("identity"), hidden_size, num_hidden, fields.text("framing"),
                fields.text("question"), fields.choice("review_format", REVIEW_FORMATS, default="third_person"), pool,
                fields.text("data_digest", default="", empty=True), fields.integer("n_records", low=0, default=0),
                fields.combine(), fields.mapping("info"), spans=fields.spans() if pool == "spans" else None,
                operating=fields.operating())
    refuse_degenerate(card, meta_path, tensor_path)
    return card


def _vector(tensors: dict, name: str, size: int, path: Path) -> np.ndarray:
    value = tensors.get(name)
    if value is None or value.shape != (size,) or not np.issubdtype(value.dtype, np.number):
        raise DataFormatError(f"{path}: tensor {name!r} missing or not a vector of {size} numbers "
                              "(the card's hidden_size)")
    value = value.astype(np.float64)
    if not np.isfinite(value).all():
        raise DataFormatError(f"{path}: tensor {name!r} holds a non-finite number")
    return value


def refuse_degenerate(card: Card, meta_path: Path, tensor_path: Path | None = None) -> None:
    """Refuse a card whose verdict cannot depend on the answer, or that flags every answer or none
    of its own fitting data; a loaded card and a fitted one before it is saved alike.

    * ``threshold`` (the cut, folded into the offset) within :data:`THRESHOLD_MARGIN` of 0 or 1;
    * ``sd`` below the fit's floor, ``w`` all zeros or overflowing, ``scale`` zero or too small to
      move the log-odds by :data:`MIN_LOGIT_RANGE` over the records (below): every answer scores
      the same;
    * ``scale``/``offset`` that give every record the card was fitted on the same verdict. The
      records' projections ``s = w . z`` (``z`` standardised by the records' own mean and sd) have
      mean 0 and variance at most ``|w|^2 * hidden_size``, so each lies within
      ``|w| * sqrt((N - 1) * hidden_size)`` of 0 (Samuelson's inequality): past that distance
      from the cut in projection units, ``|offset - logit(threshold)| / |scale|``, no record is on
      the other side. Exact for ``last`` and ``answer`` cards; for ``spans`` cards, which score
      windows of the same projections, the same generous bound. ``N`` is the stored records;
    * with stored cross-validated scores (``operating.cv``), a cut that flags all of them or none.
    """
    p, tensors = card.probe, tensor_path or meta_path.with_name(CARD_TENSORS)
    if not THRESHOLD_MARGIN <= p.threshold <= 1 - THRESHOLD_MARGIN:
        raise DataFormatError(f"{meta_path}: field 'threshold' must lie in [{THRESHOLD_MARGIN:g}, "
                              f"{1 - THRESHOLD_MARGIN}], got {p.threshold!r}: a cut at 0 or 1 flags every answer "
                              "or none")
    if not (np.asarray(p.sd) >= MIN_SD).all():
        raise DataFormatError(f"{tensors}: tensor 'sd' must be at least {MIN_SD:g} everywhere (it divides the "
                              "features; a fit never goes below that)")
    with np.errstate(over="ignore"):
        norm = float(np.linalg.norm(p.w))
    if norm == 0:
        raise DataFormatError(f"{tensors}: tensor 'w' is all zeros: the card would score every answer the same")
    if not math.isfinite(norm):
        raise DataFormatError(f"{tensors}: tensor 'w' is too large (its norm overflows): projections would be "
                              "infinite or NaN")
    if p.a == 0:
        raise DataFormatError(f"{meta_path}: field 'scale' is 0: the card would score every answer the same")
    cv = card.operating.get("cv")
    records = len(cv["latent"]) if cv else card.n_records
    gap = abs(p.b - math.log(p.threshold / (1 - p.threshold))) / abs(p.a)  # the cut, in projection units
    reach = norm * math.sqrt(max(records - 1, 1) * card.hidden_size)
    if abs(p.a) * reach < MIN_LOGIT_RANGE:
        raise DataFormatError(f"{meta_path}: field 'scale' {p.a:g} with tensor 'w' of norm {norm:.3g} moves the "
                              f"score's log-odds by less than {MIN_LOGIT_RANGE:g} over any answers the card was "
                              "fitted on: every answer would get the same verdict")
    if records and gap > reach:
        raise DataFormatError(f"{meta_path}: fields 'scale' and 'offset': {p.a:g} and {p.b:g} put the cut "
                              f"{gap:.3g} projection units from 0, beyond every one of the card's {records} "
                              f"fitting records (at most {reach:.3g}): it flags all of them or none")
    if cv:
        flagged = int(np.sum(np.asarray(cv["latent"]) <= p.threshold))
        if flagged in (0, records):
            raise DataFormatError(f"{meta_path}: field 'threshold' {p.threshold:g} flags "
                                  f"{'none' if flagged == 0 else 'every one'} of the card's {records} "
                                  "cross-validated scores (operating.cv.latent)")


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


def find_card(spec: str, adapter: str | None = None, explicit: str | None = None,
              trust_adapter_card: bool = False) -> Path | None:
    """Where the conscience's card is: ``explicit``; else, only when ``trust_adapter_card``, the
    card shipped with the weights (:func:`weights_card`); else the shipped card for ``bundled``.

    A card decides what the conscience lets through, so one that arrives with downloaded weights
    is not trusted by default: whoever ships a fine-tune would ship its judge too."""
    if explicit:
        return Path(explicit)
    if trust_adapter_card:
        folder = weights_card(spec, adapter)
        if folder is not None:
            return folder
    if spec == "bundled":
        from ..framings import data_path

        shipped = data_path("cards/bundled")
        if (shipped / CARD_JSON).is_file():
            return shipped
    return None


def weights_card(spec: str, adapter: str | None = None) -> Path | None:
    """A card inside the adapter folder, else inside the model folder (the folder itself or its
    ``conscience-card/``): used only when the user trusts it (``trust_adapter_card``)."""
    for folder in (adapter, spec):
        if folder and Path(folder).is_dir():
            for candidate in (Path(folder), Path(folder) / CARD_SUBFOLDER):
                if (candidate / CARD_JSON).is_file():
                    return candidate
    return None
