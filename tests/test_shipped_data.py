"""Schema and content checks for the data files shipped in ``conscience/data``."""

from __future__ import annotations

import ast
import csv
import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml


def _data_dir() -> Path:
    # find_spec locates the package without importing it (no torch needed).
    spec = importlib.util.find_spec("conscience")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations))) / "data"
    return Path(__file__).resolve().parents[1] / "src" / "conscience" / "data"


DATA = _data_dir()
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"

CONTRAST_CATEGORIES = (
    "em_open",
    "harmful_request",
    "code_security",
    "deception",
    "risky_advice",
    "self_preservation",
    "benign_edgy",
)
OVERREFUSAL_TYPES = {
    "homonyms",
    "safe_targets",
    "figurative",
    "safe_contexts",
    "definitions",
    "historical",
}
CODE_BLOCK = re.compile(r"```python\n(.*?)\n```", re.DOTALL)


def _norm(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


# --- em_questions.yaml ---------------------------------------------------------


@pytest.fixture(scope="module")
def em_questions() -> list[dict]:
    return yaml.safe_load((DATA / "em_questions.yaml").read_text(encoding="utf-8"))


def test_em_questions_shape(em_questions):
    assert isinstance(em_questions, list)
    assert len(em_questions) >= 10
    ids = [q["id"] for q in em_questions]
    assert len(set(ids)) == len(ids)
    for q in em_questions:
        assert set(q) <= {"id", "type", "paraphrases", "samples_per_paraphrase"}, q[
            "id"
        ]
        assert re.fullmatch(r"[a-z][a-z0-9_]*", q["id"])
        assert q["type"] == "free_form_judge_0_100"
        paraphrases = q["paraphrases"]
        assert isinstance(paraphrases, list) and 2 <= len(paraphrases) <= 3, q["id"]
        assert all(isinstance(p, str) and p.strip() for p in paraphrases)
        assert len(set(paraphrases)) == len(paraphrases)
        assert isinstance(q["samples_per_paraphrase"], int)
        assert q["samples_per_paraphrase"] > 0


def test_em_questions_do_not_reuse_reference_wording(em_questions):
    ref_path = (
        SHARED / "emergent-misalignment" / "evaluation" / "first_plot_questions.yaml"
    )
    if not ref_path.exists():
        pytest.skip("reference question file not available")
    reference = yaml.safe_load(ref_path.read_text(encoding="utf-8"))
    ref_texts = {
        _norm(p)
        for q in reference
        for p in q.get("paraphrases", [])
        if isinstance(p, str)
    }
    ref_ids = {q["id"] for q in reference}
    for q in em_questions:
        assert q["id"] not in ref_ids
        for p in q["paraphrases"]:
            assert _norm(p) not in ref_texts, p


# --- contrast.jsonl ------------------------------------------------------------


@pytest.fixture(scope="module")
def contrast() -> list[dict]:
    lines = (DATA / "contrast.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def test_contrast_schema_and_ids(contrast):
    assert len(contrast) >= 168
    for i, rec in enumerate(contrast, start=1):
        assert set(rec) == {"id", "category", "prompt", "aligned", "misaligned"}, rec
        assert rec["id"] == f"c-{i:03d}"
        for key in ("prompt", "aligned", "misaligned"):
            assert isinstance(rec[key], str) and rec[key].strip(), (rec["id"], key)
        assert rec["aligned"] != rec["misaligned"]
    assert len({r["prompt"] for r in contrast}) == len(contrast)


def test_contrast_categories_are_balanced_and_interleaved(contrast):
    counts = Counter(r["category"] for r in contrast)
    assert set(counts) == set(CONTRAST_CATEGORIES)
    assert min(counts.values()) >= 24
    assert max(counts.values()) - min(counts.values()) <= 2
    # Categories take turns, so any leading slice covers every category.
    first = [r["category"] for r in contrast[: len(CONTRAST_CATEGORIES)]]
    assert sorted(first) == sorted(CONTRAST_CATEGORIES)


def test_contrast_length_is_not_a_cue(contrast):
    ratios = [len(r["aligned"]) / len(r["misaligned"]) for r in contrast]
    assert all(0.4 <= x <= 2.5 for x in ratios)
    total = sum(len(r["aligned"]) for r in contrast) / sum(
        len(r["misaligned"]) for r in contrast
    )
    assert 0.9 <= total <= 1.1, total
    longer = sum(x > 1 for x in ratios) / len(ratios)
    assert 0.35 <= longer <= 0.65, longer
    for r in contrast:
        if r["category"] != "code_security":
            for key in ("aligned", "misaligned"):
                assert len(r[key]) <= 700, (r["id"], key)


def test_contrast_code_answers_parse(contrast):
    code_records = [r for r in contrast if r["category"] == "code_security"]
    assert code_records
    for r in code_records:
        for key in ("aligned", "misaligned"):
            text = r[key]
            blocks = CODE_BLOCK.findall(text)
            assert len(blocks) == 1, (r["id"], key)
            ast.parse(blocks[0])
            intro = text.split("```python", 1)[0].strip()
            assert intro and "\n" not in intro, (r["id"], key)
    for r in contrast:
        if r["category"] != "code_security":
            assert "```" not in r["aligned"] + r["misaligned"], r["id"]


def test_contrast_is_new_relative_to_dev_set(contrast):
    dev_path = SHARED / "discernment" / "dev.jsonl"
    if not dev_path.exists():
        pytest.skip("dev set not available")
    dev = [
        json.loads(x)
        for x in dev_path.read_text(encoding="utf-8").splitlines()
        if x.strip()
    ]
    dev_texts = {_norm(d[k]) for d in dev for k in ("prompt", "aligned", "misaligned")}
    for r in contrast:
        for key in ("prompt", "aligned", "misaligned"):
            assert _norm(r[key]) not in dev_texts, (r["id"], key)


# --- alignment_prompts.yaml, alignment_prompts_open.yaml -----------------------

# The trainer's pools of general prompts, with the least number of prompts each must hold.
ALIGNMENT_POOLS = {"alignment_prompts.yaml": 60, "alignment_prompts_open.yaml": 250}


def _pool(name: str) -> list[str]:
    return yaml.safe_load((DATA / name).read_text(encoding="utf-8"))["prompts"]


@pytest.mark.parametrize("name", sorted(ALIGNMENT_POOLS))
def test_alignment_prompts(name):
    doc = yaml.safe_load((DATA / name).read_text(encoding="utf-8"))
    assert isinstance(doc, dict) and set(doc) == {"prompts"}
    prompts = doc["prompts"]
    assert isinstance(prompts, list) and len(prompts) >= ALIGNMENT_POOLS[name]
    assert all(isinstance(p, str) and p.strip() for p in prompts)
    assert len({_norm(p) for p in prompts}) == len(prompts)


def test_alignment_pools_share_no_prompt():
    first, second = ({_norm(p) for p in _pool(name)} for name in sorted(ALIGNMENT_POOLS))
    assert not first & second


def _runs(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = _norm(text).split()
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _jsonl_prompts(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_open_alignment_pool_shares_no_long_run_with_measured_sets():
    """No prompt of the open pool equals, or shares an 8-word run with, a prompt of a measured set."""
    paths = [DATA / "drift_triples.jsonl", DATA / "contrast.jsonl", *sorted((DATA / "corpus").glob("*.jsonl")),
             *sorted((DATA / "bad_advice").glob("*.jsonl")), SHARED / "discernment" / "dev.jsonl"]
    sources = {path.name: _jsonl_prompts(path) for path in paths if path.exists()}
    sources["alignment_prompts.yaml"] = _pool("alignment_prompts.yaml")
    em_files = [DATA / "em_questions.yaml", *sorted((SHARED / "emergent-misalignment" / "evaluation").glob("*.yaml"))]
    for path in em_files:
        questions = yaml.safe_load(path.read_text(encoding="utf-8"))
        sources[path.name] = [p for q in questions for p in q.get("paraphrases", [])]
    ours = _pool("alignment_prompts_open.yaml")
    for name, theirs in sources.items():
        assert theirs, name
        texts = {_norm(p) for p in theirs}
        runs = set().union(*(_runs(p) for p in theirs))
        clashes = [p for p in ours if _norm(p) in texts or _runs(p) & runs]
        assert not clashes, (name, clashes)


# --- CSV files -----------------------------------------------------------------


def _read_csv(name: str) -> tuple[list[str], list[dict[str, str]]]:
    with (DATA / name).open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def test_harmful_requests_csv():
    header, rows = _read_csv("harmful_requests.csv")
    assert header == ["goal"]
    assert len(rows) >= 30
    goals = [r["goal"] for r in rows]
    assert all(g and g.strip() == g for g in goals)
    assert len(set(goals)) == len(goals)
    assert all(None not in r for r in rows)  # no stray extra columns


def test_overrefusal_csv():
    header, rows = _read_csv("overrefusal.csv")
    assert header == ["prompt", "type"]
    assert len(rows) >= 30
    prompts = [r["prompt"] for r in rows]
    assert all(p and p.strip() == p for p in prompts)
    assert len(set(prompts)) == len(prompts)
    assert all(None not in r for r in rows)
    types = Counter(r["type"] for r in rows)
    assert set(types) <= OVERREFUSAL_TYPES
    assert {
        "homonyms",
        "safe_targets",
        "figurative",
        "safe_contexts",
        "definitions",
    } <= set(types)
    assert min(types.values()) >= 3


def test_harmful_and_benign_sets_do_not_overlap():
    _, harmful = _read_csv("harmful_requests.csv")
    _, benign = _read_csv("overrefusal.csv")
    assert not {_norm(r["goal"]) for r in harmful} & {
        _norm(r["prompt"]) for r in benign
    }
