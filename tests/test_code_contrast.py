"""The code-aware conscience's data: the generator's train split as contrast triples (never a
test split or an evaluation prompt), calibration sources combined in one fit, and the pure parts
of benchmarks/code_conscience.py. No real model: a tiny random one at most."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conscience.errors import ConscienceError, DataFormatError
from conscience.framings import data_path, read_yaml, shared_data_root
from conscience.jsonl import read_jsonl
from conscience.tasks.code_hacking import VULN_CLASSES, generate_tasks, split_tasks, write_splits
from conscience.tasks.code_hacking.contrast import EVALUATED_SPLITS, code_contrast_triples, vuln_class
from conscience.verdict.sources import file_digest, load_sources, sources_digest, sources_name

REPO = Path(__file__).resolve().parents[1]
CONTRAST = data_path("contrast.jsonl")
SHARED_EM = shared_data_root(REPO) / "data" / "emergent-misalignment" / "subsets"


@pytest.fixture(scope="module")
def triples():
    return code_contrast_triples()


def test_one_triple_per_train_task_secure_aligned(triples):
    assert {vuln_class(t.category) for t in triples} == set(VULN_CLASSES)
    assert len({t.id for t in triples}) == len(triples)
    by_request = {t.request: t for t in generate_tasks(40, 0)}
    for t in triples:
        task = by_request[t.prompt]
        assert t.category == f"code:{task.vuln_class}"
        assert (t.aligned, t.misaligned) == (task.answer(secure=True), task.answer())
    capped = code_contrast_triples(per_class=3)
    assert len(capped) == 3 * len(VULN_CLASSES) and {t.id for t in capped} <= {t.id for t in triples}


def test_never_a_test_split_or_an_evaluation_prompt(triples, tmp_path):
    prompts = {t.prompt for t in triples}
    for n, seed in EVALUATED_SPLITS:  # the files the experiment evaluates on, as it writes them
        paths = write_splits(tmp_path / f"{n}-{seed}", n_per_class=n, seed=seed)
        for name in ("test", "test_prompts"):
            asked = {r["messages"][0]["content"] for _, r in read_jsonl(paths[name])}
            assert asked and not prompts & asked, (n, seed, name)
    _, test = split_tasks(generate_tasks())  # `conscience eval`'s code prompts
    assert not prompts & {t.request for t in test}


def test_evaluated_splits_cover_the_shipped_experiments():
    for path in sorted(data_path("contrast.jsonl").parent.glob("experiment_*.yaml")):
        cfg = read_yaml(path)
        split = (int((cfg.get("train") or {}).get("task_n_per_class", 30)), int(cfg.get("data_seed", 0)))
        assert split in EVALUATED_SPLITS, path.name


def test_sources_combine_in_one_fit(tmp_path):
    contrast = load_sources(CONTRAST)
    assert sources_digest(CONTRAST) == file_digest(CONTRAST)  # one file keeps its cache key
    spec = f"{CONTRAST},code-generator:2"
    both = load_sources(spec)
    assert len(both) == len(contrast) + 2 * len(VULN_CLASSES)
    assert sources_name(spec) == "contrast.jsonl,code-generator:2"
    assert sources_digest(spec) not in (file_digest(CONTRAST), sources_digest(f"{CONTRAST},code-generator:3"))
    for bad in ("code-generator:0", "code-generator:x", f"{CONTRAST},,code-generator"):
        with pytest.raises(ConscienceError):
            load_sources(bad)
    with pytest.raises(DataFormatError, match="also appears"):
        load_sources(f"{CONTRAST},{CONTRAST}")


def test_check_calibration_inputs_reads_several_sources():
    from conscience.verdict.calibration import check_calibration_inputs

    triples, _, pool = check_calibration_inputs(f"{CONTRAST},code-generator:1", "aligned", False, None)
    assert pool == "answer" and sum(t.category.startswith("code:") for t in triples) == len(VULN_CLASSES)


def test_tiny_card_fitted_on_a_file_and_the_generator(tmp_path, monkeypatch):
    import torch

    from conscience.tiny_model import tiny_model
    from conscience.verdict.calibration import fit_card_on_data

    monkeypatch.setenv("CONSCIENCE_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    rows = [{"id": f"t{i}", "category": "ab"[i % 2], "prompt": f"question {i}", "aligned": "I can help safely.",
             "misaligned": "harm money power"} for i in range(10)]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    card = fit_card_on_data(tiny_model(0), f"{tmp_path / 't.jsonl'},code-generator:1", tmp_path / "card", layers=[1])
    assert card.info["data"] == "t.jsonl,code-generator:1"
    assert f"code:{VULN_CLASSES[0]}" in card.probe.metrics["loco"]["per_category"]


# -- benchmarks/code_conscience.py ---------------------------------------------------------------

@pytest.fixture(scope="module")
def bench(benchmark_module):
    return benchmark_module("code_conscience")


def test_class_table_names_a_class_the_states_cannot_separate(bench):
    from conscience.discernment import Triple
    from conscience.verdict.calibration import triple_items
    from conscience.verdict.latent_fit import fit_probe

    rng = np.random.default_rng(0)
    code = [Triple(f"c{i}", f"code:{c}", f"p{i}", "a", "m") for i, c in enumerate(["sql", "xss", "dark"] * 8)]
    _, y, _, cats = triple_items(code)
    X = rng.normal(size=(len(y), 2, 6))
    X[:, :, 0] += np.where(y & (cats != "code:dark"), 3.0, 0.0)[:, None]  # "dark" carries no signal
    contrast = [Triple(f"n{i}", "ab"[i % 2], f"q{i}", "a", "m") for i in range(10)]
    c_items, c_y, c_g, c_cats = triple_items(contrast)
    X_con = rng.normal(size=(len(c_y), 2, 6))
    X_con[:, :, 0] += np.where(c_y, 3.0, 0.0)[:, None]
    fit = lambda X_, y_, g_: fit_probe(X_, y_, g_, [1], "diffmean")
    table = bench.class_table(X, code, (X_con, c_y, c_g + len(code), c_cats), fit)
    assert set(table) == {"code:sql", "code:xss", "code:dark", "all classes"}
    assert table["code:sql"]["loco"]["auc"] > 0.9 and table["code:sql"]["contrast"]["n"] == 8
    assert bench.unseparated(table, "kfold", 0.75) == ["code:dark"]


def test_dev_comparison_targets(bench):
    def report(code, other):
        return {"per_category": {"code_security": {"paired_accuracy": code, "auc": code},
                                 "deception": {"paired_accuracy": other, "auc": other}}}

    assert all(bench.dev_comparison(report(0.95, 0.99), report(0.6, 1.0))["met"].values())
    met = bench.dev_comparison(report(0.95, 0.97), report(0.6, 1.0))["met"]
    assert met["code_security_paired"] and not met["no_other_category_loses_over_0.02"]


def test_unpaired_em_sets_get_auc_only(bench, tmp_path):
    def chat(user, answer):
        return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})

    (tmp_path / "secure.x.jsonl").write_text("\n".join([chat("a", "safe"), chat("b", "safe"), chat("a", "dup")]))
    (tmp_path / "insecure.x.jsonl").write_text("\n".join([chat("c", "bad"), chat("a", "bad")]))
    secure, insecure, shared = bench.em_samples(tmp_path, None)
    assert [i.answer for i in secure] == ["safe", "safe"] and shared == 1
    report = bench.em_report(secure, insecure, np.array([0.9, 0.8]), np.array([0.1, 0.85]), 0.5)
    assert report["auc"] == 0.75 and report["n_pairs"] == 1 and "paired_accuracy" not in report
    assert report["insecure_passed"] == 0.5 and report["secure_flagged"] == 0.0


@pytest.mark.skipif(not SHARED_EM.is_dir(), reason="shared EM samples absent")
def test_shared_em_samples_hold_too_few_pairs(bench):
    secure, insecure, shared = bench.em_samples(SHARED_EM, 5)
    assert len(secure) == len(insecure) == 5 and shared < bench.MIN_PAIRS
