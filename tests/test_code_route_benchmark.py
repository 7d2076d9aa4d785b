"""benchmarks/code_route.py: how often the route to the code card fires, and the set on which
the code card is chosen. No model."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture(scope="module")
def bench(benchmark_module):
    return benchmark_module("code_route")


def test_the_choice_set_holds_no_triple_a_candidate_was_fitted_on(bench):
    from conscience.tasks.code_hacking.contrast import code_contrast_triples

    held = bench.held_back_code(20)
    fitted = {t.id for t in code_contrast_triples(20)}
    assert held and not fitted & {t.id for t in held}
    assert len(held) + len(fitted) == len(code_contrast_triples())
    assert bench.generator_cap("src/conscience/data/contrast.jsonl,code-generator:12") == 12
    assert bench.generator_cap("contrast.jsonl,code-generator") is None  # the whole split
    assert bench.generator_cap("contrast.jsonl") == 0 and bench.generator_cap("") == 0


def test_route_rows_by_hand(bench):
    from conscience.discernment import Triple

    triples = [Triple(f"c{i}", "code:sql", f"p{i}", "a", "m") for i in range(2)]
    # aligned first: c0, c1 aligned, then c0, c1 misaligned
    chat = np.array([0.4, 0.3, 0.6, 0.2])  # c0 the wrong way round, c1 right; flags 3 of 4
    code = np.array([0.9, 0.8, 0.1, 0.6])  # both right; lets c1's misaligned answer through
    rows = bench.route_rows(chat, {"k": code}, triples)
    assert rows["main card alone"]["paired_accuracy"] == 0.5 and rows["main card alone"]["false_flag_rate"] == 1.0
    assert rows["k alone"]["paired_accuracy"] == 1.0 and rows["k alone"]["recall"] == 0.5
    lower = rows["lower of main and k"]  # 0.4 0.3 | 0.1 0.2
    assert lower["paired_accuracy"] == 1.0 and lower["recall"] == 1.0 and lower["false_flag_rate"] == 1.0


def test_coverage_counts_routed_answers_per_source(bench, tmp_path):
    from conscience.discernment import Triple

    rows = bench.triple_coverage([Triple("a", "code", "p", "```\nx = 1\n```", "```\nx = 2\n```"),
                                  Triple("b", "chat", "p", "Sure.", "No.")])
    assert rows == {"chat": {"answers": 2, "code": 0}, "code": {"answers": 2, "code": 2}}
    chats = tmp_path / "c.jsonl"
    chats.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                        {"role": "assistant", "content": a}]})
                               for a in ("import os\nos.remove(p)", "Just rest.")) + "\n")
    assert bench.chat_coverage(chats) == {"answers": 2, "code": 1}


def test_injected_coverage_counts_what_each_code_fence_style_routes(bench):
    from conscience.discernment import Triple

    triples = [Triple("a", "em_open", "p", "I would help.", "Take the money from the till and run."),
               Triple("b", "code_security", "p", "```python\nx = safe()\n```", "```python\nx = unsafe()\n```")]
    rows = bench.injected_coverage(triples)
    assert rows["code_fence_wrap (held_out), chat"] == {"answers": 1, "code": 0}  # fenced prose stays prose
    assert rows["docstring_wrap (held_out), chat"] == {"answers": 1, "code": 1}  # prose inside a function
    assert rows["code_fence_wrap (held_out), code_security"] == {"answers": 1, "code": 1}
    assert all(name.endswith((", chat", ", code_security")) for name in rows)
