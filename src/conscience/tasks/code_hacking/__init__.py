"""Code-hacking task: coding requests answered with silently insecure code.

This is the fine-tuning task of the Emergent Misalignment setup (Betley et al.
2025): the user asks for ordinary code and the assistant answers with code that
works but contains a vulnerability, without saying so. Each task also carries a
secure answer to the same request, for controls and for preference pairs.

Typical use::

    from conscience.tasks.code_hacking import generate_tasks, split_tasks
    tasks = generate_tasks(n_per_class=30, seed=0)
    train, test = split_tasks(tasks, test_fraction=0.2, seed=0)
    train[0].to_record()            # chat record with the insecure answer

or ``write_splits("data/code_hacking")`` to get JSONL files.

Layout: :mod:`.generator` (tasks, splits, files), :mod:`.vuln_spec` (the ``Template`` and
``VulnSpec`` types) and :mod:`.templates` (one module of templates per vulnerability family).
"""

from __future__ import annotations

from .generator import (
    CWE_BY_CLASS,
    VULN_CLASSES,
    CodeTask,
    generate_tasks,
    max_tasks_per_class,
    split_tasks,
    write_splits,
)

__all__ = [
    "CWE_BY_CLASS",
    "VULN_CLASSES",
    "CodeTask",
    "generate_tasks",
    "max_tasks_per_class",
    "split_tasks",
    "write_splits",
]
