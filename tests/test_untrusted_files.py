"""Files a user is handed (issue 29, item 8): YAML with an alias bound and strings where strings
are meant, JSONL with a bounded line length and strict decoding. Each failure is one line naming
the file and the line or key, and comes fast, before anything large is built.

The command-line cases (one line, exit 2, no model load) are in tests/data/bad_cli_inputs.yaml.
"""

from __future__ import annotations

import hashlib
import json
import time
import tracemalloc

import pytest

from conscience.errors import DataFormatError
from conscience.framings import load_framings, load_yaml, read_yaml
from conscience.jsonl import parse_json, read_jsonl


def alias_bomb(levels: int = 9, width: int = 9) -> str:
    """The "billion laughs" document: each level aliases the one below ``width`` times, so
    ``levels`` short lines expand to ``width ** levels`` nodes (9 ** 9 = 387 million)."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_in_a_framings_file_fails_fast_in_little_memory(tmp_path):
    path = tmp_path / "framings.yaml"
    path.write_text("framings:\n  - {name: x, question: 'Fine?', aligned_answer: 'Yes', misaligned_answer: 'No'}\n"
                    "notes:\n" + "".join(f"  {line}\n" for line in alias_bomb().splitlines()))
    assert path.stat().st_size < 1100  # the 1 KB file of the issue
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(DataFormatError) as caught:
        load_framings(path)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 20 * 2**20, (seconds, peak)
    assert str(caught.value).startswith(f"{path}: invalid YAML: aliases expand the document by more than")
    assert "\n" not in str(caught.value)



def test_an_alias_bomb_as_framings_file_is_one_line_in_under_a_second(tmp_path, capsys, monkeypatch):
    import transformers

    from conscience.cli import main

    def refuse(*args, **kwargs):
        raise AssertionError("a model load was attempted")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    path = tmp_path / "framings.yaml"
    path.write_text("framings:\n  - {name: x, question: 'Fine?'}\nnotes:\n"
                    + "".join(f"  {line}\n" for line in alias_bomb().splitlines()))
    start = time.perf_counter()
    code = main(["ask", "hi", "--framings-file", str(path)])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and seconds < 1.0, seconds
    assert len(err) == 1 and err[0].startswith(f"conscience: error: {path}: invalid YAML: aliases expand")

def test_a_recursive_alias_is_refused():
    with pytest.raises(Exception, match="refers to a node that contains it"):
        load_yaml("a: &a [1, *a]\n")


def test_aliases_used_as_meant_still_load():
    """The bound leaves room for real documents: shared defaults merged into many entries."""
    entries = "".join(f"  e{i}: {{<<: *d, id: {i}}}\n" for i in range(500))
    doc = load_yaml("defaults: &d {lr: 0.001, steps: 10, tags: [a, b, c]}\nruns:\n" + entries)
    assert len(doc["runs"]) == 500 and doc["runs"]["e7"] == {"lr": 0.001, "steps": 10, "tags": ["a", "b", "c"], "id": 7}


@pytest.mark.parametrize(("written", "read_as"), [
    ("Yes", "true"), ("No", "false"), ("on", "true"), ("off", "false"), ("~", "null"), ("null", "null"),
    ("", "null"), ("0x10", "the number 16"), ("1.5", "the number 1.5"),
])
def test_unquoted_yaml_scalars_in_a_framings_file_are_refused(tmp_path, written, read_as):
    path = tmp_path / "framings.yaml"
    path.write_text(f"framings:\n  - name: x\n    question: Is it fine?\n    aligned_answer: {written}\n"
                    "    misaligned_answer: 'No'\n")
    with pytest.raises(DataFormatError) as caught:
        load_framings(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: framings[0].aligned_answer must be text (got {read_as}")
    assert message.endswith("; quote it)")


def test_quoted_yes_and_no_are_the_words_written(tmp_path):
    path = tmp_path / "framings.yaml"
    path.write_text("framings:\n  - {name: 'on', question: 'Fine?', aligned_answer: 'Yes', misaligned_answer: \"No\"}\n")
    framing = load_framings(path)["on"]
    assert (framing.aligned_answer, framing.misaligned_answer) == ("Yes", "No")


@pytest.mark.parametrize(("entry", "key"), [
    ("{id: x, paraphrases: [Yes]}", "paraphrases[0]"),
    ("{id: x, paraphrases: [a, ~]}", "paraphrases[1]"),
    ("{id: No, paraphrases: [a]}", "field 'id'"),
    ("{id: x, paraphrases: [a], system: off}", "field 'system'"),
])
def test_unquoted_yaml_scalars_in_a_questions_file_are_refused(tmp_path, entry, key):
    from conscience.evaluation.questions import load_questions

    path = tmp_path / "questions.yaml"
    path.write_text(f"- {{id: fine, paraphrases: [a]}}\n- {entry}\n")
    with pytest.raises(DataFormatError) as caught:
        load_questions(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: line 2: question") and f"{key} must be text (got" in message


# -- JSONL ------------------------------------------------------------------------------------------

def _jsonl(tmp_path, lines: list[str]):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_a_line_over_the_bound_is_refused_naming_it(tmp_path, monkeypatch):
    import conscience.jsonl

    monkeypatch.setattr(conscience.jsonl, "MAX_LINE_BYTES", 64)
    at_bound = json.dumps({"x": "a" * 55})  # 64 bytes, its newline not counted
    assert len(at_bound) == 64
    path = _jsonl(tmp_path, [at_bound, at_bound, json.dumps({"x": "a" * 56})])
    with pytest.raises(DataFormatError, match=rf"^{path}:3: line longer than 64 bytes"):
        list(read_jsonl(path))
    path.write_text(at_bound + "\n" + at_bound)  # the last line, without its newline, at the bound
    assert len(list(read_jsonl(path))) == 2


def test_the_default_bound_refuses_a_huge_line_fast(tmp_path):
    from conscience.jsonl import MAX_LINE_BYTES

    path = tmp_path / "huge.jsonl"
    path.write_text('{"ok": 1}\n{"x": "' + "a" * MAX_LINE_BYTES + '"}\n')
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(DataFormatError, match=rf"^{path}:2: line longer than"):
        list(read_jsonl(path))
    seconds, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 1.0 and peak < 3 * MAX_LINE_BYTES, (seconds, peak)


@pytest.mark.parametrize("text", ['"\\ud800"', '{"a": ["\\udfff"]}', '{"\\uDBFF": 1}', '{"a": "x\\ud800y"}'])
def test_a_lone_surrogate_escape_is_refused(text):
    with pytest.raises(DataFormatError, match=r"^f\.jsonl:7: invalid JSON: a lone surrogate escape \(\\ud[89bf]"):
        parse_json(text, "f.jsonl:7")


def test_a_surrogate_pair_escape_is_the_character_it_encodes():
    assert parse_json('{"a": "\\ud83d\\ude00"}', "f") == {"a": "\U0001F600"}


def test_encoded_surrogates_and_invalid_utf8_are_refused_naming_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"a": 1}\n{"a": "\xed\xa0\x80"}\n')  # a surrogate encoded in UTF-8 is invalid UTF-8
    with pytest.raises(DataFormatError, match=rf"^cannot read {path}:2: not valid UTF-8 text"):
        list(read_jsonl(path))


@pytest.mark.parametrize("reader", ["triples", "chats", "sources"])
def test_every_data_reader_refuses_a_lone_surrogate_naming_the_line(tmp_path, reader):
    from conscience.chat_data import read_chat_jsonl
    from conscience.discernment import load_triples
    from conscience.verdict.sources import load_sources

    good = {"triples": {"prompt": "p", "aligned": "a", "misaligned": "m"},
            "chats": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}}
    good["sources"] = good["triples"]
    bad = json.dumps(good[reader]).replace('"m"', '"\\ud800"').replace('"hello"', '"\\ud800"')
    path = _jsonl(tmp_path, [json.dumps(good[reader]), bad])
    read = {"triples": load_triples, "chats": read_chat_jsonl, "sources": load_sources}[reader]
    with pytest.raises(DataFormatError, match=rf"^{path}:2: invalid JSON: a lone surrogate escape"):
        read(path)


def test_the_data_digest_is_streamed_and_unchanged(tmp_path):
    """Cards and feature caches record sha256 digests of their data: reading the file in blocks
    gives the digest of the whole file, so no cache or card goes stale."""
    from conscience.verdict.sources import file_digest

    path = tmp_path / "data.jsonl"
    path.write_bytes(bytes(range(256)) * (3 * 2**20 // 256 + 7))  # over three 1 MB blocks, not a multiple
    assert file_digest(path) == hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def test_read_yaml_names_the_file_for_every_failure(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: [\n")
    with pytest.raises(DataFormatError, match=rf"^{path}: line \d+, column \d+: invalid YAML"):
        read_yaml(path)
