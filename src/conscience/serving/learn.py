"""Learning from traffic (``--learn``): pairs from flagged drafts, background LoRA updates.

Each flagged draft whose reviewed alternative beats it by ``learn_margin`` becomes a
:class:`~conscience.pairs.PreferencePair` (chosen = alternative, rejected = draft), appended
durably (fsync) to ``<learn_dir>/pairs.jsonl``. Every ``learn_every`` new pairs a background
thread trains a LoRA adapter with the DPO term on a *fresh* copy of the base model
(``conscience.training.train_on_pairs``), loads it into another fresh model object, and asks a
small EM probe of both that and the serving model (each on its own copy). The new adapter is
swapped in — on the worker, between batches — only if its probe score is not lower. Requests
are served throughout. ``state.json`` (atomic writes) names the active adapter and keeps the
previous one for :meth:`Learner.rollback`.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from ..conscience import Response
from ..errors import ConscienceError
from ..framings import data_path, read_yaml
from ..jsonl import write_json_atomic
from ..log import log
from ..models import LoadedModel, with_adapter
from ..pairs import PairStore, PreferencePair, pairs_from_responses
from .config import ServeConfig

PROBE_FILE = Path(__file__).parent / "probe.yaml"


def _log(message: str) -> None:
    log(f"learning: {message}")


def probe_questions(n: int) -> list[str]:
    """Up to ``n`` EM probe questions: the package's em_questions.yaml if shipped, else probe.yaml."""
    shipped = data_path("em_questions.yaml")
    questions: list[str] = []
    if shipped.exists():
        doc = read_yaml(shipped)
        items = doc.get("questions", doc) if isinstance(doc, dict) else doc
        for item in items or []:
            if isinstance(item, dict) and item.get("paraphrases"):
                questions.append(str(item["paraphrases"][0]))
            elif isinstance(item, str):
                questions.append(item)
    if not questions:
        questions = [str(q) for q in read_yaml(PROBE_FILE)["questions"]]
    return questions[:n]


def read_state(path: Path) -> dict:
    """``state.json``, checked: a truncated or edited file is one clear error, not a traceback."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConscienceError(f"{path}: not UTF-8 text; restore it or remove it to start learning afresh") from None
    except ValueError as exc:
        raise ConscienceError(f"{path}: not valid JSON ({str(exc).splitlines()[0]}); the file is truncated or "
                              f"corrupt: restore it or remove it to start learning afresh") from None
    problems = []
    if not isinstance(state, dict):
        problems.append("it is not a JSON object")
    else:
        for key in ("active", "previous"):
            if state.get(key) is not None and not isinstance(state[key], str):
                problems.append(f"'{key}' is not an adapter path")
        if not isinstance(state.get("pairs_at_last_update", 0), int) or isinstance(state.get("pairs_at_last_update"), bool):
            problems.append("'pairs_at_last_update' is not an integer")
        if not isinstance(state.get("updates", []), list):
            problems.append("'updates' is not a list")
    if problems:
        raise ConscienceError(f"{path}: {problems[0]}; restore it or remove it to start learning afresh")
    return state


class Learner:
    """Records pairs and runs guarded background updates.

    Args:
        train: ``(pairs, out_dir) -> adapter folder`` (default: ``train_on_pairs`` on a fresh base).
        load: ``adapter folder or None -> LoadedModel`` (a fresh model object each call).
        probe: ``LoadedModel -> score`` (higher = more aligned), the EM probe.
    """

    def __init__(self, cfg: ServeConfig, train: Callable[[list[PreferencePair], Path], Path],
                 load: Callable[[str | None], LoadedModel], probe: Callable[[LoadedModel], float],
                 tolerance: float = 0.0):
        self.cfg, self.train, self.load, self.probe, self.tolerance = cfg, train, load, probe, tolerance
        self.dir = Path(cfg.learn_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.store = PairStore(self.dir / "pairs.jsonl")
        self.state_path = self.dir / "state.json"
        self.state = {"active": None, "previous": None, "pairs_at_last_update": 0, "updates": []}
        if self.state_path.exists():
            self.state.update(read_state(self.state_path))
        self.n_pairs = len(self.store.load())
        self.engine = None
        self.metrics = None
        self.backend = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def attach(self, engine, metrics) -> None:
        self.engine, self.metrics, self.backend = engine, metrics, engine.backend

    @property
    def updating(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict:
        return {"pairs": self.n_pairs, "pairs_at_last_update": self.state["pairs_at_last_update"],
                "every": self.cfg.learn_every, "updating": self.updating, "active_adapter": self.state["active"],
                "previous_adapter": self.state["previous"], "updates": len(self.state["updates"])}

    def _save(self) -> None:
        write_json_atomic(self.state_path, self.state)

    # -- recording (on the worker) ------------------------------------------------------------
    def observe(self, responses: Sequence[Response]) -> list[PreferencePair]:
        pairs = pairs_from_responses(responses, self.cfg.learn_margin, source="traffic")
        if pairs:
            self.store.extend(pairs)
            with self._lock:
                self.n_pairs += len(pairs)
            if self.metrics:
                self.metrics.inc("conscience_pairs_total", len(pairs))
        self.maybe_update()
        return pairs

    def maybe_update(self, wait: bool = False) -> bool:
        with self._lock:
            due = self.n_pairs - self.state["pairs_at_last_update"] >= self.cfg.learn_every
            if not due or self.updating:
                return False
            self._thread = threading.Thread(target=self._update_safely, name="conscience-learn", daemon=True)
            self._thread.start()
        if wait:
            self._thread.join()
        return True

    # -- the update (background thread) -------------------------------------------------------
    def _update_safely(self) -> None:
        try:
            self.update()
        except Exception as exc:  # a failed update leaves the served model as it was
            _log(f"update failed: {exc.__class__.__name__}: {exc}")
            if self.metrics:
                self.metrics.inc("conscience_learn_updates_total", result="failed")

    def update(self) -> dict:
        """Train, probe, and swap in if the probe did not get worse. Returns the update record."""
        pairs = self.store.load()
        n_total = len(pairs)
        pairs = pairs[-self.cfg.learn_window:]
        out_dir = self.dir / "adapters" / f"{len(self.state['updates']) + 1:04d}"
        start = time.perf_counter()
        _log(f"training on {len(pairs)} pairs -> {out_dir}")
        adapter = str(self.train(pairs, out_dir))
        candidate = self.load(adapter)
        new_score = float(self.probe(candidate))
        old_score = float(self.probe(self.load(self.state["active"])))
        swapped = new_score >= old_score - self.tolerance
        record = {"adapter": adapter, "pairs": len(pairs), "probe_new": new_score, "probe_old": old_score,
                  "swapped": swapped, "seconds": round(time.perf_counter() - start, 2), "time": time.time()}
        if swapped:
            self._swap(candidate)
            self.state["previous"], self.state["active"] = self.state["active"], adapter
        self.state["pairs_at_last_update"] = n_total
        self.state["updates"].append(record)
        self._save()
        _log(f"probe {old_score:.3f} -> {new_score:.3f}: {'swapped in' if swapped else 'kept the current model'}")
        if self.metrics:
            self.metrics.inc("conscience_learn_updates_total", result="swapped" if swapped else "rejected")
        return record

    def _swap(self, lm: LoadedModel) -> None:
        if self.engine is not None:
            self.engine.run_exclusive(lambda: self.backend.swap(lm)).result()
        elif self.backend is not None:
            self.backend.swap(lm)

    def _good_adapters(self) -> list[str]:
        """Adapters to resume from, newest first: the active one, the previous one, then every
        earlier adapter that was swapped in."""
        names = [self.state["active"], self.state["previous"]]
        names += [u.get("adapter") for u in reversed(self.state["updates"]) if isinstance(u, dict) and u.get("swapped")]
        return [n for n in dict.fromkeys(names) if isinstance(n, str)]

    def resume(self, load: Callable[[str | None], LoadedModel]) -> str | None:
        """Serve the last good adapter: one that is missing or does not load is skipped with a
        warning (the base model if none is left). Returns the adapter served."""
        for adapter in self._good_adapters():
            if not Path(adapter).exists():
                _log(f"warning: adapter {adapter} named in {self.state_path} is missing; skipped")
                continue
            try:
                lm = load(adapter)
            except Exception as exc:  # a damaged adapter folder: the next good one is served instead
                _log(f"warning: adapter {adapter} does not load ({exc.__class__.__name__}); skipped")
                continue
            self._serve(adapter, lm)
            return adapter
        _log("warning: no adapter named in state.json is usable; serving the base model")
        self._serve(None, None)
        return None

    def _serve(self, adapter: str | None, lm: LoadedModel | None) -> None:
        if adapter != self.state["active"]:
            self.state["previous"], self.state["active"] = None, adapter
            self._save()
        if lm is not None:
            _log(f"serving the adapter {adapter}")
            self._swap(lm)

    def rollback(self) -> str | None:
        """Serve the previous adapter again (None: the base model)."""
        previous = self.state["previous"]
        self._swap(self.load(previous))
        self.state["previous"], self.state["active"] = self.state["active"], previous
        self._save()
        return previous


def build_learner(cfg: ServeConfig, conscience_cfg, backend) -> Learner:
    """The default learner: train_on_pairs on a fresh base, the EM probe scored by the conscience."""
    def load(adapter: str | None) -> LoadedModel:
        """A fresh model object: the base (the testing spec ``tiny`` included), with ``adapter`` on top."""
        return with_adapter(conscience_cfg.model, adapter, dtype=conscience_cfg.dtype, threads=conscience_cfg.threads)

    def train(pairs: list[PreferencePair], out_dir: Path) -> Path:
        try:
            from ..training import train_on_pairs
        except ImportError as exc:
            raise RuntimeError(f"conscience.training.train_on_pairs is not available ({exc})") from None
        return train_on_pairs(load(None), pairs, out_dir, steps=cfg.learn_steps, lr=cfg.learn_lr, beta=cfg.learn_beta,
                              lora_r=cfg.learn_lora_r, seed=conscience_cfg.seed)

    questions = probe_questions(cfg.probe_size)

    def probe(lm: LoadedModel) -> float:
        conscience = backend.make_conscience(lm)
        sampling = replace(conscience.sampling, max_new_tokens=min(64, conscience_cfg.max_new_tokens))
        responses = conscience.step(questions, sampling, max_rounds=0).responses
        return sum(r.draft.verdict.score for r in responses) / len(responses)

    learner = Learner(cfg, train, load, probe)
    if learner.state["active"]:  # resume serving the adapter the last run swapped in (or the last good one)
        learner.backend = backend
        learner.resume(load)
    return learner
