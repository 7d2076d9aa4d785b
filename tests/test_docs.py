"""The README and the documentation site cannot rot: every command they show parses with today's CLI,
every flag is in its command's ``--help``, every config key exists, and every config field is
documented (the configuration reference is generated from those docstrings)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import re
import shlex
import sys
import textwrap
import typing
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# Pages whose fenced code blocks are run through the parser in full (usage text); inline commands on
# every page are checked for their flags and keys only (they may quote part of a command).
USAGE_PAGES = [README, *sorted((DOCS / "commands").glob("*.md")), DOCS / "index.md"]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_config_reference", DOCS / "gen_config_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


gen = _generator()


# -- the configuration reference ----------------------------------------------------------------


def test_every_config_field_has_a_docstring():
    missing = gen.undocumented()
    assert not missing, ("these config fields have no docstring under them (write one: the configuration "
                         f"reference is generated from it): {missing}")


def test_the_reference_has_a_row_per_field_with_type_default_and_bounds():
    from conscience.conscience_config import ConscienceConfig
    from conscience.experiment.config import ExperimentConfig
    from conscience.serving.config import ServeConfig
    from conscience.training.config import TrainConfig

    page = gen.render()
    for cls in (ConscienceConfig, TrainConfig, ServeConfig, ExperimentConfig):
        section = page.split(f"## {cls.__name__}\n", 1)[1].split("\n## ", 1)[0]
        rows = [line for line in section.splitlines() if line.startswith("| `")]
        assert [r.split("`")[1] for r in rows] == [f.name for f in dataclasses.fields(cls)]
    train = page.split("## TrainConfig\n", 1)[1]
    assert "| `lam` | `float` | `0.1` | `>= 0` | the weight λ of the conscience term" in train
    assert "| `lr_schedule` | `LrSchedule` | `linear` | `linear`, `constant`, `cosine` |" in train
    assert "| `conscience` | [ConscienceConfig](#conscienceconfig) |" in train
    assert "`recall:X`" in page.split("| `threshold` |", 1)[1].split("\n", 1)[0]


def test_a_field_without_a_docstring_is_refused(tmp_path, monkeypatch):
    package = tmp_path / "fakecfg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mod.py").write_text(textwrap.dedent('''
        from dataclasses import dataclass

        @dataclass
        class FakeConfig:
            """A config."""

            documented: int = 1
            """a documented key"""
            forgotten: str = "x"  # a comment is not a docstring
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(gen, "PACKAGE", package)
    monkeypatch.setattr(gen, "PACKAGE_NAME", "fakecfg")
    monkeypatch.setattr(gen, "CONFIGS", (("FakeConfig", "a test"),))
    assert gen.undocumented() == ["FakeConfig.forgotten"]
    with pytest.raises(gen.ReferenceError, match="FakeConfig.forgotten"):
        gen.render()
    assert gen.main(["--out", str(tmp_path / "config.md")]) == 1 and not (tmp_path / "config.md").exists()


# -- the README ---------------------------------------------------------------------------------


def fenced_blocks(text: str, languages: tuple[str, ...] = ("bash", "sh", "shell", "console")) -> list[str]:
    return [m.group(2) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)
            if m.group(1) in languages]


def test_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    for page in re.findall(r"\]\((docs/[^)#]+)", text):  # every link into the docs points at a page
        assert (ROOT / page).is_file(), page


def test_readme_test_command_is_what_ci_runs():
    """CI runs the README's test command, split over lines; the two must not drift apart."""
    blocks = fenced_blocks(README.read_text(encoding="utf-8"))
    readme = next(b.strip() for b in blocks if "pytest" in b)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    after = ci.split("# The README's test command", 1)[1].split("\n", 1)[1]
    ci_steps = []
    for line in after.splitlines():
        if not line.strip():
            break
        ci_steps += [step.strip() for step in line.split("&&")]
    assert [step.strip() for step in readme.split("&&")] == ci_steps


# -- commands in the README and the docs --------------------------------------------------------


@dataclasses.dataclass
class Command:
    where: str
    argv: list[str]
    full: bool  # a whole command from a usage block (parsed), not an inline quote (flags checked)


def shell_commands(text: str) -> list[list[str]]:
    """Each simple command of a shell snippet as argv: comments, ``\\`` continuations, leading
    ``VAR=value`` assignments and ``nice -n N`` removed, ``&&`` / ``;`` chains split."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:  # an unbalanced quote in prose-like text: not a command
            continue
        command: list[str] = []
        for token in [*tokens, "&&"]:
            if token in ("&&", ";", "||"):
                while command and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", command[0]):
                    command.pop(0)
                if command[:2] == ["nice", "-n"]:
                    command = command[3:]
                if command:
                    out.append(command)
                command = []
            else:
                command.append(token)
    return out


def conscience_argv(argv: list[str]) -> list[str] | None:
    """The arguments after ``conscience`` (also under ``accelerate launch ... -m conscience.cli``)."""
    if argv[0] == "conscience":
        return argv[1:]
    if "-m" in argv and argv[argv.index("-m") + 1:argv.index("-m") + 2] == ["conscience.cli"]:
        return argv[argv.index("-m") + 2:]
    return None


def collect_commands() -> list[Command]:
    found = []
    for page in USAGE_PAGES:
        for block in fenced_blocks(page.read_text(encoding="utf-8")):
            found += [Command(f"{page.relative_to(ROOT)}: {' '.join(a)}", a, True) for a in shell_commands(block)]
    for page in [README, *sorted(DOCS.rglob("*.md"))]:
        text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
        for span in inline_code(text):
            span = " ".join(span.split())
            found += [Command(f"{page.relative_to(ROOT)}: {span}", a, False) for a in shell_commands(span)
                      if len(a) > 1 and (a[0] == "conscience" or a[0] == "python" and a[1].startswith("benchmarks/"))]
    return found


def inline_code(text: str) -> list[str]:
    """The inline code spans of markdown text: a span opened by N backticks closes at the next run of
    exactly N (so ```` ```text ```` is one span), and may run over lines."""
    return [m.group(2) for m in re.finditer(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", text, flags=re.S)]


COMMANDS = collect_commands()


def test_the_pages_hold_commands():
    full = [c for c in COMMANDS if c.full and conscience_argv(c.argv)]
    assert len(full) >= 40
    assert {conscience_argv(c.argv)[0] for c in full} >= {"ask", "review", "calibrate", "train", "eval", "serve",
                                                          "experiment"}
    assert any(c.argv[:2] == ["python", "benchmarks/discernment.py"] for c in COMMANDS)


@pytest.fixture(scope="module")
def parser() -> argparse.ArgumentParser:
    from conscience.cli import build_parser

    return build_parser()


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def command_path(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[list[str], argparse.ArgumentParser]:
    """The sub-command names at the front of ``argv`` (``["eval", "drift"]``) and their parser."""
    path, current = [], parser
    for token in argv:
        choices = _subparsers(current)
        if token not in choices:
            break
        path.append(token)
        current = choices[token]
    return path, current


def help_text(parser: argparse.ArgumentParser, path: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_:
        parser.parse_args([*path, "--help"])
    assert exit_.value.code == 0
    return out.getvalue()


def config_of(path: list[str]) -> type:
    """The config class whose keys a command's ``--set`` (and ``train``'s KEY=VALUE) sets."""
    from conscience.conscience_config import ConscienceConfig
    from conscience.experiment.config import ExperimentConfig
    from conscience.serving.config import ServeConfig
    from conscience.training.config import TrainConfig

    return {"train": TrainConfig, "serve": ServeConfig, "experiment": ExperimentConfig}.get(path[0], ConscienceConfig)


def key_exists(cls: type, dotted: str) -> bool:
    """``conscience.threshold`` in ServeConfig, ``train.pair_uses`` in ExperimentConfig, ``lam`` in TrainConfig."""
    from conscience.training.config import TrainConfig

    head, _, rest = dotted.partition(".")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if head not in fields:
        return False
    if not rest:
        return True
    hint = typing.get_type_hints(cls)[head]
    if dataclasses.is_dataclass(hint):
        return key_exists(hint, rest)
    return cls.__name__ == "ExperimentConfig" and head == "train" and key_exists(TrainConfig, rest)


def config_keys(path: list[str], argv: list[str]) -> list[str]:
    """Keys the command sets: ``--set KEY=VALUE`` everywhere, bare ``KEY=VALUE`` for ``train``."""
    keys = [v.split("=", 1)[0] for flag, v in zip(argv, argv[1:], strict=False) if flag == "--set" and "=" in v]
    if path == ["train"]:
        keys += [a.split("=", 1)[0] for a in argv[1:] if re.fullmatch(r"[a-z_][\w.]*=.*", a)]
    return keys


@pytest.mark.parametrize("command", [c for c in COMMANDS if conscience_argv(c.argv) is not None],
                         ids=lambda c: c.where[:110])
def test_conscience_command_matches_the_cli(command, parser):
    argv = conscience_argv(command.argv)
    path, _ = command_path(parser, argv)
    assert path, f"{command.where}: no such command"
    help_ = help_text(parser, path)
    flags = [a.split("=", 1)[0] for a in argv if a.startswith("--")]
    missing = [f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", help_)]
    assert not missing, f"{command.where}: {missing} not in `conscience {' '.join(path)} --help`"
    cls = config_of(path)
    unknown = [k for k in config_keys(path, argv) if not key_exists(cls, k)]
    assert not unknown, f"{command.where}: {unknown} are not {cls.__name__} keys"
    if command.full:  # the whole command: values, choices and required arguments too
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                parser.parse_args(argv)
        except SystemExit as exc:
            pytest.fail(f"{command.where}: the CLI refuses it: {err.getvalue().strip()} (exit {exc.code})")


@pytest.mark.parametrize("command", [c for c in COMMANDS if c.argv[:1] == ["python"]
                                     and c.argv[1:2] and c.argv[1].startswith("benchmarks/")],
                         ids=lambda c: c.where[:110])
def test_benchmark_command_flags_exist(command):
    script = ROOT / command.argv[1]
    assert script.is_file(), f"{command.where}: no {command.argv[1]}"
    source = script.read_text(encoding="utf-8")
    flags = [a.split("=", 1)[0] for a in command.argv[2:] if a.startswith("--")]
    missing = [f for f in flags if f'"{f}"' not in source]
    assert not missing, f"{command.where}: {command.argv[1]} defines no {missing}"


def test_a_renamed_flag_is_caught(parser):
    """The check above fails on a flag that is not in --help (argparse alone would accept an
    abbreviation such as --thresh), and on a config key that does not exist."""
    help_ = help_text(parser, ["ask"])
    assert "--threshold" in help_ and not re.search(r"(?<![\w-])--thresh(?![\w-])", help_)
    assert key_exists(config_of(["serve"]), "conscience.threshold")
    assert key_exists(config_of(["experiment"]), "train.pair_uses")
    assert not key_exists(config_of(["experiment"]), "train.pair_usage")
    assert not key_exists(config_of(["train"]), "lamda")
    assert shell_commands('FOO=1 nice -n 19 conscience ask "a b" --json && ruff check src  # note') == [
        ["conscience", "ask", "a b", "--json"], ["ruff", "check", "src"]]
    assert inline_code("a ```` ```text ```` fence, then `conscience ask\n--json` and ``x ` y``") == [
        " ```text ", "conscience ask\n--json", "x ` y"]
