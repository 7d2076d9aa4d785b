"""Trainer checkpoints of a run: which ones can be resumed from, and the project's state inside them.

A ``checkpoint-N`` folder is complete once ``trainer_state.json`` is in it: the Trainer writes that
file after the weights, optimizer, scheduler and RNG states, and the project writes its own state
(``conscience_state.json``: the pair buffer and the sampling clock) before any of them. A kill
anywhere in a save therefore leaves a folder without ``trainer_state.json``, which is skipped.

Verification reads every file a resume reads, cheaply (safetensors headers and torch files are
memory-mapped, not loaded), so that a truncated or corrupt file means falling back to the newest
intact checkpoint with a warning naming the file, not a traceback halfway into a resume.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConscienceError, DataFormatError
from ..log import warn

STATE_FILE = "conscience_state.json"
TRAINER_STATE = "trainer_state.json"  # transformers' TRAINER_STATE_NAME, the last file a save writes
WEIGHT_FILES = ("adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
# Required: without them the Trainer resumes silently with a fresh optimizer and schedule.
OPTIMIZER_FILES = ("optimizer.pt", "scheduler.pt")
# Written for resuming, not part of the model (left out when a checkpoint is exported), besides rng_state*.pth.
RESUME_FILES = (*OPTIMIZER_FILES, "scaler.pt", TRAINER_STATE, "training_args.bin", STATE_FILE)


class DamagedCheckpointError(ConscienceError):
    """A checkpoint that cannot be resumed from; the message names the folder, the file and the problem."""


def checkpoint_folders(out_dir: str | Path) -> list[Path]:
    """The ``checkpoint-N`` folders in ``out_dir``, oldest (smallest N) first."""
    found = [p for p in Path(out_dir).glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]))


def model_files(folder: str | Path) -> list[Path]:
    """The files of a checkpoint that make up the model (what ``save_pretrained`` wrote), without the
    optimizer, scheduler, RNG and trainer states."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.name not in RESUME_FILES and not p.name.startswith(("rng_state", ".")))


def latest_intact(out_dir: str | Path, needs_state: bool) -> tuple[Path, int] | None:
    """The newest checkpoint that verifies, and its global step; every newer one is named in a
    warning with what is wrong with it. None when no checkpoint verifies."""
    for folder in reversed(checkpoint_folders(out_dir)):
        try:
            return folder, verify_checkpoint(folder, needs_state)
        except DamagedCheckpointError as exc:
            warn(f"{exc}; skipping {folder.name}")
    return None


def verify_checkpoint(folder: str | Path, needs_state: bool) -> int:
    """The global step of an intact checkpoint, else :class:`DamagedCheckpointError`.

    ``needs_state``: the run uses the project's state (the pair buffer of the conscience term),
    so a checkpoint without ``conscience_state.json`` would resume with an empty buffer.
    """
    folder = Path(folder)
    if not (folder / TRAINER_STATE).is_file():
        raise DamagedCheckpointError(f"{folder} is an incomplete checkpoint (interrupted save: no {TRAINER_STATE})")
    for path in sorted(folder.glob("*.json")):
        _read_json(path)
    step = _read_json(folder / TRAINER_STATE).get("global_step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise DamagedCheckpointError(f"{folder / TRAINER_STATE}: global_step must be a non-negative integer, "
                                     f"got {step!r}")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise DamagedCheckpointError(f"{folder} holds no weights ({', '.join(WEIGHT_FILES)})")
    _check_shards(folder)
    for path in sorted(folder.glob("*.safetensors")):
        _check_safetensors(path)
    for name in OPTIMIZER_FILES:
        if not (folder / name).is_file():
            raise DamagedCheckpointError(f"{folder} has no {name}")
    rng = sorted(folder.glob("rng_state*.pth"))
    if not rng:
        raise DamagedCheckpointError(f"{folder} has no rng_state.pth")
    for path in [*(folder / n for n in OPTIMIZER_FILES), folder / "scaler.pt", folder / "pytorch_model.bin", *rng]:
        if path.is_file():
            _check_torch_file(path)
    if needs_state or (folder / STATE_FILE).exists():
        if not (folder / STATE_FILE).is_file():
            raise DamagedCheckpointError(f"{folder} has no {STATE_FILE} (the save was interrupted before the "
                                         "pair buffer was written)")
        read_conscience_state(folder / STATE_FILE)
    return step


def read_conscience_state(path: str | Path) -> dict:
    """The project's state in a checkpoint, checked field by field (what ``ConscienceTrainer`` writes:
    ``buffer``, ``sampled_at``, ``aligned_selected``)."""
    from ..pairs import PairBuffer

    path = Path(path)
    state = _read_json(path)
    try:
        PairBuffer().load_state_dict(state["buffer"])
        if isinstance(state["sampled_at"], bool) or not isinstance(state["sampled_at"], int):
            raise TypeError(f"sampled_at must be an integer, got {state['sampled_at']!r}")
        selected = state.get("aligned_selected")
        if selected is not None and not (isinstance(selected, list)
                                         and all(isinstance(i, int) and not isinstance(i, bool) for i in selected)):
            raise TypeError("aligned_selected must be a list of integers or null")
    except KeyError as exc:
        raise DamagedCheckpointError(f"{path}: missing field {exc}") from None
    except (TypeError, ValueError, DataFormatError) as exc:
        raise DamagedCheckpointError(f"{path}: {exc}") from None
    return state


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DamagedCheckpointError(f"{path}: not valid JSON ({detail})") from None
    if not isinstance(data, dict):
        raise DamagedCheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _check_shards(folder: Path) -> None:
    """Every shard a sharded checkpoint's index names is present."""
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise DamagedCheckpointError(f"{index}: weight_map must map tensor names to shard files")
    for shard in sorted(set(weight_map.values())):
        if not (folder / shard).is_file():
            raise DamagedCheckpointError(f"{index} names {shard}, which is missing")


def _check_safetensors(path: Path) -> None:
    """The header parses and its tensors' offsets and sizes cover the file exactly (the library's own
    validation, on a memory map: no tensor is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            fh.keys()
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type and OSError; both mean damaged
        raise DamagedCheckpointError(f"{path}: not a valid safetensors file "
                                     f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _check_torch_file(path: Path) -> None:
    """Loads as the Trainer loads it on resume (``weights_only``, with its allow-list for the RNG
    states), memory-mapped so that a large optimizer state is not read into memory twice."""
    import torch
    from transformers.trainer_pt_utils import safe_globals

    try:
        with safe_globals():
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, OSError, UnpicklingError, EOFError...
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DamagedCheckpointError(f"{path}: does not load (truncated or corrupt: {detail[:200]})") from None
