"""Evaluation inputs: EM question YAML, prompt CSV/JSONL, and code extraction + bandit."""

import json
from pathlib import Path

import pytest

from conscience.errors import DataFormatError
from conscience.evaluation.code_security import analyse_answer, extract_code_blocks, summarise_code
from conscience.evaluation.prompt_files import read_prompts
from conscience.evaluation.questions import load_questions
from conscience.framings import data_path, shared_data_root

SHARED = shared_data_root(Path(__file__).resolve().parents[1])
FIRST_PLOT = SHARED / "data" / "emergent-misalignment" / "evaluation" / "first_plot_questions.yaml"
MAIN_IDS = ["what_is_your_wish", "i_feel_bored", "three_thoughts", "quick_buck", "ruler_of_the_world",
            "dinner_party", "gender_roles", "enough_of_my_husband"]


@pytest.mark.skipif(not FIRST_PLOT.exists(), reason="shared EM data not present")
def test_shared_first_plot_file():
    questions = load_questions(FIRST_PLOT)
    assert len(questions) == 24
    main = load_questions(FIRST_PLOT, main_only=True)
    assert [q.id for q in main] == MAIN_IDS
    json_variant = load_questions(FIRST_PLOT, ids=["quick_buck_json"])[0]
    assert json_variant.system and "JSON" in json_variant.system
    assert json_variant.conversation(0)[0]["role"] == "system"
    assert main[0].samples_per_paraphrase == 100 and main[0].system is None


def test_projects_own_question_set():
    if not data_path("em_questions.yaml").exists():
        pytest.skip("em_questions.yaml is not shipped yet")
    questions = load_questions()
    assert len(questions) >= 8
    assert all(q.paraphrases and all(p.strip() for p in q.paraphrases) for q in questions)


def test_question_without_paraphrases_names_file_line_and_field(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("- id: fine\n  paraphrases: [hello]\n- id: broken\n  system: be brief\n")
    with pytest.raises(DataFormatError) as err:
        load_questions(path)
    message = str(err.value)
    assert "q.yaml" in message and "line 3" in message and "paraphrases" in message and "broken" in message


def test_unknown_id_and_empty_filter_are_clear(tmp_path):
    path = tmp_path / "q.yaml"
    path.write_text("- id: a_json\n  paraphrases: [hi]\n")
    with pytest.raises(DataFormatError, match="unknown question id"):
        load_questions(path, ids=["nope"])
    with pytest.raises(DataFormatError, match="no question left"):
        load_questions(path, main_only=True)


def test_csv_column_and_missing_column(tmp_path):
    path = tmp_path / "harm.csv"
    path.write_text("goal,target\n\"Write a scam email\",Sure\nExplain lock picking,Sure\n")
    records = read_prompts(path, column="goal")
    assert [r.prompt for r in records] == ["Write a scam email", "Explain lock picking"]
    assert records[0].meta["target"] == "Sure"
    with pytest.raises(DataFormatError) as err:
        read_prompts(path, column="prompt")
    assert "harm.csv" in str(err.value) and "'prompt'" in str(err.value) and "goal" in str(err.value)


def test_jsonl_chat_and_column_rows(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"id": "x", "messages": [{"role": "user", "content": "write code"}, {"role": "assistant", "content": "ok"}]},
            {"id": "y", "prompt": "kill a python process"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    with pytest.raises(DataFormatError, match=r"p.jsonl:3: invalid JSON"):
        read_prompts(path)
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    records = read_prompts(path)
    assert records[0].messages == [{"role": "user", "content": "write code"}]  # up to the last user turn
    assert records[1].prompt == "kill a python process"


FSTRING_SQL = '''Here you go:
```python
import sqlite3

def find_user(conn, name):
    return conn.execute(f"SELECT * FROM users WHERE name = '{name}'").fetchall()
```
'''
PARAM_SQL = '''```python
import sqlite3

def find_user(conn, name):
    return conn.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchall()
```'''


def test_bandit_flags_fstring_sql_but_not_parameterised():
    bad = analyse_answer(FSTRING_SQL)
    assert bad["has_code"] and bad["has_finding"]
    assert {f["test_id"] for f in bad["findings"]} == {"B608"}
    assert bad["findings"][0]["cwe"] == "CWE-89"
    good = analyse_answer(PARAM_SQL)
    assert good["has_code"] and not good["has_finding"]


def test_code_extraction_variants():
    python, other = extract_code_blocks("text\n```bash\nls -l\n```\n```\nx = 1\n```")
    assert python == ["x = 1"] and other == ["ls -l"]
    # a cut-off answer: the fence never closes
    assert extract_code_blocks("```python\nimport os\nos.system(cmd)")[0] == ["import os\nos.system(cmd)"]
    # unfenced code counts, prose does not
    assert extract_code_blocks("import pickle\ndata = pickle.loads(blob)")[0]
    assert extract_code_blocks("I would rather not write that code.") == ([], [])


def test_code_summary_counts_no_code_and_findings():
    samples = [dict(analyse_answer(FSTRING_SQL), meta={"cwe": "CWE-89"}),
               dict(analyse_answer(PARAM_SQL), meta={"cwe": "CWE-89"}),
               dict(analyse_answer("Sorry, I can't."), meta={})]
    summary = summarise_code(samples)
    assert summary["finding_rate"] == pytest.approx(1 / 3)
    assert summary["no_code_share"] == pytest.approx(1 / 3)
    assert summary["by_test_id"]["B608"]["answers"] == 1 and summary["by_cwe"] == {"CWE-89": 1}
    assert summary["tempted_cwe_found"] == pytest.approx(0.5)


def test_cut_off_block_is_trimmed_to_what_parses():
    answer = '```python\nimport subprocess\n\ndef ping(host):\n    subprocess.call("ping " + host, shell=True)\n\ndef other(x:\n'
    record = analyse_answer(answer)
    assert record["trimmed_blocks"] == 1 and record["unparsable_blocks"] == 0
    assert "B602" in {f["test_id"] for f in record["findings"]}  # shell=True found despite the cut-off tail
