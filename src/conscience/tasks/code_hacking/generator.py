"""The code-hacking generator: renders every vulnerability class's templates into
:class:`CodeTask` objects, picks ``n_per_class`` of them per seed, splits them into train and
test without sharing a request, and writes the splits as JSONL.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...jsonl import write_jsonl_atomic
from .templates import SPECS
from .vuln_spec import VulnSpec

#: Names of the vulnerability classes, in a fixed order.
VULN_CLASSES: tuple[str, ...] = tuple(spec.name for spec in SPECS)

#: CWE identifier for each vulnerability class.
CWE_BY_CLASS: dict[str, str] = {spec.name: spec.cwe for spec in SPECS}


def _fence(code: str) -> str:
    return f"```python\n{code.strip()}\n```"


@dataclass(frozen=True)
class CodeTask:
    """One coding request with an insecure and a secure answer.

    Attributes:
        id: stable identifier ``"<vuln_class>-t<template>-s<slot>"``; it does not
            depend on the seed.
        vuln_class: one of :data:`VULN_CLASSES`.
        cwe: the CWE identifier of the vulnerability, e.g. ``"CWE-89"``.
        request: the user's message.
        insecure: Python source that does the job but contains the vulnerability.
        secure: Python source that does the same job safely.
    """

    id: str
    vuln_class: str
    cwe: str
    request: str
    insecure: str
    secure: str

    def answer(self, secure: bool = False) -> str:
        """The assistant message: the chosen code in a ```python fence, nothing else."""
        return _fence(self.secure if secure else self.insecure)

    def to_record(self, secure: bool = False) -> dict:
        """A chat-format training record.

        Returns ``{"messages": [user, assistant], "id", "vuln_class", "cwe",
        "variant"}`` where the assistant content is the fenced code and
        ``variant`` is ``"secure"`` or ``"insecure"``.
        """
        return {
            "messages": [
                {"role": "user", "content": self.request},
                {"role": "assistant", "content": self.answer(secure)},
            ],
            "id": self.id,
            "vuln_class": self.vuln_class,
            "cwe": self.cwe,
            "variant": "secure" if secure else "insecure",
        }

    def to_prompt_record(self) -> dict:
        """The user turn only, for sampling the model's own answer."""
        return {
            "messages": [{"role": "user", "content": self.request}],
            "id": self.id,
            "vuln_class": self.vuln_class,
            "cwe": self.cwe,
        }


def _all_tasks(spec: VulnSpec) -> list[CodeTask]:
    tasks: list[CodeTask] = []
    seen: set[str] = set()
    for ti, template in enumerate(spec.templates):
        for si, slots in enumerate(spec.slots):
            request, insecure, secure = template.render(slots)
            if request in seen:
                continue
            seen.add(request)
            tasks.append(
                CodeTask(
                    id=f"{spec.name}-t{ti}-s{si:02d}",
                    vuln_class=spec.name,
                    cwe=spec.cwe,
                    request=request,
                    insecure=insecure,
                    secure=secure,
                )
            )
    return tasks


def max_tasks_per_class() -> dict[str, int]:
    """How many distinct tasks each class can produce."""
    return {spec.name: len(_all_tasks(spec)) for spec in SPECS}


def generate_tasks(n_per_class: int = 30, seed: int = 0) -> list[CodeTask]:
    """Generate ``n_per_class`` distinct tasks for every vulnerability class.

    The result is deterministic for a given ``seed``; different seeds pick and
    order the (template, slot) combinations differently. Tasks are grouped by
    class in :data:`VULN_CLASSES` order.

    Raises:
        TypeError: if ``n_per_class`` is not an int.
        ValueError: if ``n_per_class`` is below 1 or exceeds what some class can
            produce (see :func:`max_tasks_per_class`).
    """
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int):
        raise TypeError(f"n_per_class must be an int, got {n_per_class!r}")
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    out: list[CodeTask] = []
    for spec in SPECS:
        pool = _all_tasks(spec)
        if n_per_class > len(pool):
            raise ValueError(
                f"n_per_class={n_per_class} is more than the {len(pool)} distinct tasks "
                f"available for class {spec.name!r}"
            )
        random.Random(f"{seed}:{spec.name}").shuffle(pool)
        out.extend(pool[:n_per_class])
    return out


def split_tasks(
    tasks: Sequence[CodeTask], test_fraction: float = 0.2, seed: int = 0
) -> tuple[list[CodeTask], list[CodeTask]]:
    """Split tasks into (train, test), stratified by vulnerability class.

    Tasks with the same request text always land on the same side, so no request
    appears in both splits. Within each class about ``test_fraction`` of the
    distinct requests (at least one, and never all when there are two or more)
    go to test. Both lists keep the input order.

    Raises:
        TypeError: if ``test_fraction`` is not a number.
        ValueError: if ``test_fraction`` is not strictly between 0 and 1.
    """
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)):
        raise TypeError(f"test_fraction must be a number, got {test_fraction!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(
            f"test_fraction must be strictly between 0 and 1, got {test_fraction}"
        )

    requests_by_class: dict[str, list[str]] = {}
    for task in tasks:
        reqs = requests_by_class.setdefault(task.vuln_class, [])
        if task.request not in reqs:
            reqs.append(task.request)

    test_requests: set[str] = set()
    for vuln_class, reqs in requests_by_class.items():
        order = sorted(reqs)
        random.Random(f"{seed}:split:{vuln_class}").shuffle(order)
        n_test = max(1, round(len(order) * test_fraction))
        if len(order) >= 2:
            n_test = min(n_test, len(order) - 1)
        test_requests.update(order[:n_test])

    train = [task for task in tasks if task.request not in test_requests]
    test = [task for task in tasks if task.request in test_requests]
    return train, test


def write_splits(
    out_dir: str | Path,
    n_per_class: int = 30,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, Path]:
    """Generate, split and write the task as JSON Lines files.

    Files written into ``out_dir`` (each one atomically, via a temporary file
    and :func:`os.replace`):

    * ``train.jsonl``: training records with the insecure answer;
    * ``train_secure.jsonl``: the same requests with the secure answer;
    * ``test.jsonl``: held-out requests with the insecure answer (to measure
      how well the task was learned);
    * ``test_prompts.jsonl``: the held-out user turns only.

    Returns a dict from ``"train"``, ``"train_secure"``, ``"test"`` and
    ``"test_prompts"`` to the written paths.
    """
    tasks = generate_tasks(n_per_class=n_per_class, seed=seed)
    train, test = split_tasks(tasks, test_fraction=test_fraction, seed=seed)
    out = Path(out_dir)
    paths = {
        "train": out / "train.jsonl",
        "train_secure": out / "train_secure.jsonl",
        "test": out / "test.jsonl",
        "test_prompts": out / "test_prompts.jsonl",
    }
    write_jsonl_atomic(paths["train"], (t.to_record() for t in train))
    write_jsonl_atomic(
        paths["train_secure"], (t.to_record(secure=True) for t in train)
    )
    write_jsonl_atomic(paths["test"], (t.to_record() for t in test))
    write_jsonl_atomic(paths["test_prompts"], (t.to_prompt_record() for t in test))
    return paths
