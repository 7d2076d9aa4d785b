"""Tests for the code-hacking task generator (conscience.tasks.code_hacking)."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import tokenize
from collections import Counter, defaultdict

import pytest

from conscience.tasks.code_hacking import (
    CWE_BY_CLASS,
    VULN_CLASSES,
    CodeTask,
    generate_tasks,
    max_tasks_per_class,
    split_tasks,
    write_splits,
)

REQUIRED_CLASSES = {
    "sql_string_building",
    "shell_injection",
    "path_traversal",
    "insecure_permissions",
    "unsafe_deserialisation",
    "unsafe_yaml",
    "weak_password_hashing",
    "disabled_tls_verification",
    "hardcoded_secrets",
    "template_xss",
}
FENCE = re.compile(r"\A```python\n(.*)\n```\Z", re.DOTALL)


@pytest.fixture(scope="module")
def all_tasks() -> list[CodeTask]:
    """Every task the generator can produce (the largest n all classes allow)."""
    return generate_tasks(n_per_class=min(max_tasks_per_class().values()), seed=0)


def test_classes_cover_required_set():
    assert len(VULN_CLASSES) >= 10
    assert len(set(VULN_CLASSES)) == len(VULN_CLASSES)
    assert REQUIRED_CLASSES <= set(VULN_CLASSES)
    for name in VULN_CLASSES:
        assert re.fullmatch(r"CWE-\d+", CWE_BY_CLASS[name]), name


def test_each_class_offers_at_least_30_distinct_tasks():
    caps = max_tasks_per_class()
    assert set(caps) == set(VULN_CLASSES)
    assert min(caps.values()) >= 30, caps


def test_generate_is_deterministic_and_seed_dependent():
    a = generate_tasks(n_per_class=30, seed=0)
    b = generate_tasks(n_per_class=30, seed=0)
    c = generate_tasks(n_per_class=30, seed=1)
    assert a == b
    assert [t.id for t in a] != [t.id for t in c]


def test_generate_counts_and_uniqueness():
    tasks = generate_tasks(n_per_class=30, seed=3)
    counts = Counter(t.vuln_class for t in tasks)
    assert counts == {name: 30 for name in VULN_CLASSES}
    assert len({t.id for t in tasks}) == len(tasks)
    per_class_requests = defaultdict(set)
    for t in tasks:
        per_class_requests[t.vuln_class].add(t.request)
        assert t.cwe == CWE_BY_CLASS[t.vuln_class]
    assert all(len(r) == 30 for r in per_class_requests.values())
    assert len({t.request for t in tasks}) == len(tasks)


def test_every_snippet_parses_and_is_short(all_tasks):
    for t in all_tasks:
        for code in (t.insecure, t.secure):
            ast.parse(code)
            n_lines = len([line for line in code.splitlines() if line.strip()])
            assert 2 <= n_lines <= 25, (t.id, n_lines)
        assert t.insecure != t.secure
        assert "$" not in t.request + t.insecure + t.secure, t.id


def test_insecure_code_has_no_comments_or_hints(all_tasks):
    hint = re.compile(
        r"insecure|vulnerab|unsafe|inject|exploit|danger|todo|fixme", re.IGNORECASE
    )
    for t in all_tasks:
        tokens = tokenize.generate_tokens(io.StringIO(t.insecure).readline)
        assert not [tok for tok in tokens if tok.type == tokenize.COMMENT], t.id
        assert not hint.search(t.insecure), t.id
        assert not hint.search(t.request), t.id


def test_generate_rejects_bad_arguments():
    for bad in (0, -3):
        with pytest.raises(ValueError, match="n_per_class"):
            generate_tasks(n_per_class=bad)
    with pytest.raises(ValueError, match="n_per_class"):
        generate_tasks(n_per_class=10_000)
    with pytest.raises(TypeError, match="n_per_class"):
        generate_tasks(n_per_class=2.5)  # type: ignore[arg-type]


def test_split_is_stratified_and_disjoint():
    tasks = generate_tasks(n_per_class=30, seed=0)
    train, test = split_tasks(tasks, test_fraction=0.2, seed=0)
    assert len(train) + len(test) == len(tasks)
    assert not {t.request for t in train} & {t.request for t in test}
    assert not {t.id for t in train} & {t.id for t in test}
    test_counts = Counter(t.vuln_class for t in test)
    assert test_counts == {name: 6 for name in VULN_CLASSES}
    assert split_tasks(tasks, 0.2, seed=0) == (train, test)
    assert split_tasks(tasks, 0.2, seed=5) != (train, test)


def test_split_keeps_duplicate_requests_together():
    tasks = generate_tasks(n_per_class=5, seed=0)
    doubled = tasks + [
        CodeTask(t.id + "-copy", t.vuln_class, t.cwe, t.request, t.insecure, t.secure)
        for t in tasks
    ]
    train, test = split_tasks(doubled, test_fraction=0.4, seed=2)
    assert not {t.request for t in train} & {t.request for t in test}
    assert train and test


def test_split_rejects_bad_fraction():
    tasks = generate_tasks(n_per_class=3)
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match="test_fraction"):
            split_tasks(tasks, test_fraction=bad)
    with pytest.raises(TypeError, match="test_fraction"):
        split_tasks(tasks, test_fraction="0.2")  # type: ignore[arg-type]


def test_records_are_valid_chat_format():
    task = generate_tasks(n_per_class=1, seed=0)[0]
    for secure in (False, True):
        rec = task.to_record(secure=secure)
        assert set(rec) == {"messages", "id", "vuln_class", "cwe", "variant"}
        assert rec["variant"] == ("secure" if secure else "insecure")
        user, assistant = rec["messages"]
        assert user == {"role": "user", "content": task.request}
        assert assistant["role"] == "assistant"
        match = FENCE.match(assistant["content"])
        assert match, assistant["content"]
        assert match.group(1) == (task.secure if secure else task.insecure)
        json.dumps(rec)


def test_write_splits(tmp_path):
    paths = write_splits(tmp_path / "out", n_per_class=10, test_fraction=0.3, seed=4)
    assert set(paths) == {"train", "train_secure", "test", "test_prompts"}
    rows = {
        k: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
        for k, p in paths.items()
    }
    n = 10 * len(VULN_CLASSES)
    assert len(rows["train"]) + len(rows["test"]) == n
    assert len(rows["test"]) == 3 * len(VULN_CLASSES)
    assert [r["id"] for r in rows["train"]] == [r["id"] for r in rows["train_secure"]]
    assert [r["id"] for r in rows["test"]] == [r["id"] for r in rows["test_prompts"]]
    assert {r["variant"] for r in rows["train"] + rows["test"]} == {"insecure"}
    assert {r["variant"] for r in rows["train_secure"]} == {"secure"}
    for r in rows["test_prompts"]:
        assert [m["role"] for m in r["messages"]] == ["user"]
    train_req = {r["messages"][0]["content"] for r in rows["train"]}
    assert not train_req & {r["messages"][0]["content"] for r in rows["test"]}
    assert sorted(os.listdir(tmp_path / "out")) == sorted(
        p.name for p in paths.values()
    )


def test_write_splits_validates_before_writing(tmp_path):
    with pytest.raises(ValueError):
        write_splits(tmp_path / "x", n_per_class=0)
    with pytest.raises(ValueError):
        write_splits(tmp_path / "y", test_fraction=1.0)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# --- bandit -----------------------------------------------------------------

# Warnings that also fire on the *correct* way to run a subprocess (importing
# subprocess, list-form calls, calling a program by name); they say nothing about
# the vulnerability, so they don't count as a flag.
BANDIT_NOISE = {"B404", "B603", "B607"}
# Bandit has no check for paths joined from user input.
BANDIT_BLIND = {"path_traversal"}


def _bandit_flags(codes: list[str], tmp_dir) -> list[set[str]]:
    from bandit.core import config, manager

    paths = []
    for i, code in enumerate(codes):
        path = tmp_dir / f"snippet_{i:04d}.py"
        path.write_text(code, encoding="utf-8")
        paths.append(str(path))
    mgr = manager.BanditManager(config.BanditConfig(), "file", quiet=True)
    mgr.discover_files(paths)
    mgr.run_tests()
    hits: dict[str, set[str]] = defaultdict(set)
    for issue in mgr.get_issue_list():
        if issue.test_id not in BANDIT_NOISE:
            hits[os.path.abspath(issue.fname)].add(issue.test_id)
    return [hits.get(os.path.abspath(p), set()) for p in paths]


def test_bandit_flags_insecure_but_not_secure(tmp_path):
    pytest.importorskip("bandit")
    tasks = generate_tasks(n_per_class=30, seed=0)
    (tmp_path / "insecure").mkdir()
    (tmp_path / "secure").mkdir()
    bad = _bandit_flags([t.insecure for t in tasks], tmp_path / "insecure")
    good = _bandit_flags([t.secure for t in tasks], tmp_path / "secure")
    insecure_rate = sum(map(bool, bad)) / len(tasks)
    secure_rate = sum(map(bool, good)) / len(tasks)
    # Measured with bandit 1.9.4: insecure 0.93 (13 of 14 classes at 100%,
    # path_traversal at 0%), secure 0.00.
    assert insecure_rate >= 0.85, insecure_rate
    assert secure_rate <= 0.05, secure_rate
    per_class = defaultdict(list)
    for t, flags in zip(tasks, bad, strict=True):
        per_class[t.vuln_class].append(bool(flags))
    for name, flags in per_class.items():
        if name not in BANDIT_BLIND:
            assert sum(flags) / len(flags) >= 0.9, (name, sum(flags), len(flags))
