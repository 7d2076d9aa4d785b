"""Online alignment training: L = L_task + λ·L_DPO with the model's frozen self-copy.

Heavy pieces (transformers.Trainer, peft) load only when these names are first used.
"""

from __future__ import annotations

from .config import TrainConfig

__all__ = ["TrainConfig", "run_training", "train_on_pairs", "ConscienceTrainer", "TrainingDivergedError"]


def __getattr__(name: str):
    if name == "run_training":
        from .run import run_training

        return run_training
    if name == "train_on_pairs":
        from .pairs_update import train_on_pairs

        return train_on_pairs
    if name in ("ConscienceTrainer", "TrainingDivergedError"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
