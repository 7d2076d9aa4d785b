"""``--table`` of benchmarks/tradeoff.py and benchmarks/organism.py: a run folder without results
gets a row that says so (and names the file expected), instead of silently dropping out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def test_tradeoff_table_lists_folders_without_results(benchmark_module, tmp_path, monkeypatch, capsys):
    tradeoff = benchmark_module("tradeoff")
    done = tmp_path / "l1"
    drift = {"drift": 0.1, "drift_ci_low": 0.0, "drift_ci_high": 0.2, "n": 8}
    write(done / "results.json", json.dumps({"rows": [{"arm": "conscience", "drift": drift, "token_accuracy": 0.5}],
                                             "config": {"drift_split": "select"}}))
    arm = done / "seed0" / "conscience"
    write(arm / "train.done.json", json.dumps({"lam": 1, "train_seconds": 60, "metrics": {"pairs_total": 4}}))
    write(arm / "train" / "train_config.yaml", "k: 4\n")
    write(arm / "train" / "metrics.jsonl", json.dumps({"dpo_loss": 0.5, "reward_margin": 0.1}) + "\n")
    (tmp_path / "l0.3").mkdir()  # not run yet
    out = tmp_path / "tradeoff.json"
    monkeypatch.setattr(sys, "argv", ["tradeoff.py", "--table", str(done), str(tmp_path / "l0.3"), "--json", str(out)])
    assert tradeoff.main() == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| l1 | 1 | ")
    empty = lines[3]
    assert empty.startswith("| l0.3 | no results: ") and "results.json" in empty and "summary.json" in empty
    assert empty.count("|") == lines[0].count("|")  # a full row of the table
    saved = json.loads(out.read_text())
    assert [r["name"] for r in saved["rows"]] == ["l1"] and saved["no_results"] == [str(tmp_path / "l0.3")]


@pytest.mark.parametrize(("files", "expected"), [
    ({}, "has no setting.json and no probe.jsonl"),
    ({"setting.json": "{}"}, "has no probe.jsonl"),
    ({"setting.json": "{}", "probe.jsonl": ""}, "probe.jsonl is empty"),
])
def test_organism_table_lists_runs_without_results(benchmark_module, tmp_path, monkeypatch, capsys, files, expected):
    organism = benchmark_module("organism")
    done = tmp_path / "es-all32"
    write(done / "setting.json", json.dumps({"dataset": "extreme_sports", "variant": "task",
                                             "adapter": "lora-all-r32", "lr": 1e-3, "seed": 0}))
    write(done / "probe.jsonl", json.dumps({"step": 25, "drift": 0.01, "drift_ci_low": 0.0,
                                            "drift_ci_high": 0.02}) + "\n")
    empty = tmp_path / "es-control"
    empty.mkdir()
    for name, text in files.items():
        write(empty / name, text)
    out = tmp_path / "organism.json"
    monkeypatch.setattr(sys, "argv", ["organism.py", "--table", str(done), str(empty), "--out", str(out)])
    organism.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("| es-all32 | extreme_sports (task) | ")
    assert lines[3].startswith("| es-control | no results: ") and expected in lines[3], lines[3]
    assert lines[3].count("|") == lines[0].count("|")  # a full row of the table
    saved = json.loads(out.read_text())
    assert [r["run"] for r in saved["rows"]] == ["es-all32"] and expected in saved["no_results"][str(empty)]


def test_every_tradeoff_setting_is_a_valid_experiment(benchmark_module):
    """A grid entry the experiment refuses would only fail minutes into ``--run``."""
    from conscience.cli import build_parser
    from conscience.experiment.cli import _overrides
    from conscience.experiment.config import load_experiment_config

    tradeoff = benchmark_module("tradeoff")
    for name, args in tradeoff.GRID.items():
        arms = args if "--arms" in args else ["--arms", "conscience", *args]
        parsed = build_parser().parse_args(["experiment", "bad-advice", *arms, *tradeoff.SELECT, "--out", "x"])
        cfg = load_experiment_config(parsed.preset, None, _overrides(parsed))
        assert cfg.drift_split == "select" and len(cfg.arms) == 1, name
