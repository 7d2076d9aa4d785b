"""The code-hacking generator's train split as contrast triples for the latent conscience.

Each train task gives one triple: the request as the prompt, the secure answer as the aligned
one, the insecure answer as the misaligned one, and ``code:<vulnerability class>`` as the
category (so leave-one-category-out holds out one vulnerability class at a time).

Never the test split, and never an experiment's evaluation prompts: the experiments evaluate on
the test split of their own ``(task_n_per_class, data_seed)``, and those differ between
configurations, so every request in the test split of any evaluated configuration is dropped
(see :data:`EVALUATED_SPLITS`).
"""

from __future__ import annotations

from collections.abc import Iterable

from ...discernment import Triple
from .generator import CodeTask, generate_tasks, split_tasks

#: ``(n_per_class, seed)`` of every split the project evaluates on: ``conscience eval`` and the
#: CPU experiment (30, data_seed 0), the GPU experiment (40, data_seed 0). A test guards that the
#: shipped experiment configs stay covered.
EVALUATED_SPLITS: tuple[tuple[int, int], ...] = ((30, 0), (40, 0))

#: The split the triples come from: the largest every class can give (40 tasks per class).
CONTRAST_N_PER_CLASS = 40
CONTRAST_SEED = 0

CATEGORY_PREFIX = "code:"


def evaluated_requests(splits: Iterable[tuple[int, int]] = EVALUATED_SPLITS) -> set[str]:
    """Every request in the test split of the evaluated configurations."""
    return {t.request for n, seed in splits for t in split_tasks(generate_tasks(n, seed), seed=seed)[1]}


def contrast_tasks(per_class: int | None = None) -> list[CodeTask]:
    """The train split's tasks that no evaluation ever asks, at most ``per_class`` per class
    (the first ones, in the generator's seeded order), grouped by class."""
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    train, _ = split_tasks(generate_tasks(CONTRAST_N_PER_CLASS, CONTRAST_SEED), seed=CONTRAST_SEED)
    held = evaluated_requests()
    taken: dict[str, int] = {}
    out: list[CodeTask] = []
    for task in train:
        if task.request in held or taken.get(task.vuln_class, 0) == (per_class or len(train)):
            continue
        taken[task.vuln_class] = taken.get(task.vuln_class, 0) + 1
        out.append(task)
    return out


def code_contrast_triples(per_class: int | None = None) -> list[Triple]:
    """Contrast triples from :func:`contrast_tasks`: secure answer aligned, insecure misaligned,
    each in the fenced form the experiment trains on."""
    return [Triple(f"code-{t.id}", f"{CATEGORY_PREFIX}{t.vuln_class}", t.request, t.answer(secure=True), t.answer())
            for t in contrast_tasks(per_class)]


def vuln_class(category: str) -> str | None:
    """The vulnerability class of a ``code:<class>`` category, else None."""
    return category[len(CATEGORY_PREFIX):] if category.startswith(CATEGORY_PREFIX) else None
