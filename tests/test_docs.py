"""Every command the docs show for this project's own entry points at least parses.

Which commands: the lines of the ```bash / ```sh / ```shell blocks of README.md, docs/*.md and
cluster/local.md that run `python sweeps/*.py`, `python bench/*.py`, `python -m metaxl_core.*` or
`python -m sweeps.*` (`python3`, `.venv/bin/python` count as python), anywhere in the line: after
`&&`, `;` or `|`, and inside a quoted argument (`ray exec ... 'cd ~/metaxl && python ...'`). Other
programs (pip, mlflow, ray, git, bash scripts) are not checked.

How a line is read:
- a backslash at the end of a line joins the next one; `# ...` is a comment (shlex rules);
- `NAME=value` words just before `python` are environment variables, set for the check;
- the arguments end at a shell operator (`&&`, `||`, `;`, `|`, `&`, `>`, `2>&1`, ...);
- `$(...)` becomes the word SUBST; `[...]` words (optional parts of a synopsis) and `...` are
  dropped.

A command is a *template* when an argument still holds a placeholder: `<`, `>`, `$`, `~`,
SUBST, `path/to/`, or a capitalised word of 3+ letters such as SWEEP.yaml, HEAD_IP, OUT_DIR.

The check, per command:
- scripts with `--dry-run` (sweeps/pairs.py, sweeps/grid.py): a command that is not a
  template runs with `--dry-run` added and must exit 0, so its config or preset is read and
  planned too;
- every other command (templates, scripts without `--dry-run`) is parsed by the script's own
  argparse parser with its exact arguments and stopped right after a successful parse (nothing
  runs); long flags must be spelled in full (abbreviations are refused), values must pass the
  parser's types, choices and nargs, and required flags must be there.

Commands of one script run in one subprocess (cwd = project root, offline environment), each in
turn through runpy, so a script's imports are paid once. A failure names the doc file, line and
command.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

DOC_FILES = ["README.md", *sorted(p.relative_to(PROJECT_ROOT).as_posix()
                                  for p in (PROJECT_ROOT / "docs").glob("*.md")),
             "cluster/local.md"]
FENCE = re.compile(r"^```(bash|sh|shell)[ \t]*\n(.*?)^```", re.M | re.S)
PYTHON = re.compile(r"^(.*/)?python(3(\.\d+)?)?$")
SCRIPT = re.compile(r"^(sweeps|bench)/[\w-]+\.py$")
MODULE = re.compile(r"^(metaxl_core|sweeps)\.[\w.]+$")
ASSIGNMENT = re.compile(r"^[A-Za-z_]\w*=")
OPERATOR_CHARS = set("();<>|&")
PLACEHOLDER = re.compile(r"[<>$~]|SUBST|path/to/|\b[A-Z][A-Z_]{2,}\b")
DRY_RUN_FLAG = re.compile(r"""add_argument\(\s*["']--dry-run["']""")
TIMEOUT_S = 300  # per script: its imports (torch, ray, mlflow) and all its commands


@dataclass
class Command:
    where: str  # doc:line
    text: str  # the line as the doc shows it (continuations joined)
    target: str  # "sweeps/pairs.py" or "-m metaxl_core.train"
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def template(self) -> bool:
        return any(PLACEHOLDER.search(a) for a in self.args)

    @property
    def mode(self) -> str:
        return "dry-run" if has_dry_run(self.target) and not self.template else "parse"

    @property
    def argv(self) -> list[str]:
        if self.mode == "dry-run" and "--dry-run" not in self.args:
            return [*self.args, "--dry-run"]
        return self.args


def has_dry_run(target: str) -> bool:
    """Whether the script (or module) has a `--dry-run` flag (sweeps/pairs.py, sweeps/grid.py)."""
    path = PROJECT_ROOT / (target[3:].replace(".", "/") + ".py" if target.startswith("-m ")
                           else target)
    return path.is_file() and bool(DRY_RUN_FLAG.search(path.read_text(encoding="utf-8")))


def _tokens(line: str) -> list[str]:
    line = re.sub(r"\$\([^()]*\)", "SUBST", line)
    line = re.sub(r"(?<=\s)\d+(?=[<>])", " ", line)  # the fd of a redirection: 2>&1, 1>log
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def _is_operator(token: str) -> bool:
    return bool(token) and set(token) <= OPERATOR_CHARS


def commands_in_line(line: str, where: str) -> list[Command]:
    """The project commands in one shell line (recursing into quoted arguments)."""
    try:
        tokens = _tokens(line)
    except ValueError as err:  # unbalanced quotes: the doc's shell is broken
        raise AssertionError(f"{where}: cannot read the shell line ({err}): {line}") from None
    found = []
    for i, token in enumerate(tokens):
        if " " in token and "python" in token:  # a quoted command line, e.g. for `ray exec`
            found += commands_in_line(token, where)
            continue
        if not PYTHON.match(token) or i + 1 >= len(tokens):
            continue
        rest = tokens[i + 1:]
        if rest[0] == "-m" and len(rest) > 1 and MODULE.match(rest[1]):
            target, rest = f"-m {rest[1]}", rest[2:]
        elif SCRIPT.match(rest[0]):
            target, rest = rest[0], rest[1:]
        else:
            continue
        env = {}
        j = i - 1
        while j >= 0 and ASSIGNMENT.match(tokens[j]):
            name, value = tokens[j].split("=", 1)
            env[name] = value
            j -= 1
        args, skipping = [], False
        for arg in rest:
            if _is_operator(arg):
                break
            if arg.startswith("["):
                skipping = True
            if not skipping and arg != "...":
                args.append(arg)
            if skipping and arg.endswith("]"):
                skipping = False
        found.append(Command(where, line.strip(), target, args, env))
    return found


def extract(text: str, name: str) -> list[Command]:
    """The project commands of a markdown text's shell blocks."""
    found = []
    for block in FENCE.finditer(text):
        first_line = text.count("\n", 0, block.start(2)) + 1
        lines = block.group(2).split("\n")
        n = 0
        while n < len(lines):
            start, line = n, lines[n]
            while line.endswith("\\") and n + 1 < len(lines):
                n += 1
                line = line[:-1] + " " + lines[n].strip()
            found += commands_in_line(line, f"{name}:{first_line + start}")
            n += 1
    return found


def doc_commands() -> list[Command]:
    found = []
    for name in DOC_FILES:
        path = PROJECT_ROOT / name
        if path.is_file():
            found += extract(path.read_text(encoding="utf-8"), name)
    return found


# Runs in the subprocess: argv from stdin, one JSON result per command to the file argv[1].
DRIVER = r"""
import argparse, contextlib, io, json, os, runpy, sys, traceback

class Parsed(BaseException):
    pass

mode = {"now": "parse", "parsed": False}
_init = argparse.ArgumentParser.__init__
_parse = argparse.ArgumentParser.parse_args

def init(self, *args, **kwargs):
    kwargs["allow_abbrev"] = False  # a doc must spell every flag in full
    _init(self, *args, **kwargs)

def parse_args(self, args=None, namespace=None):
    try:
        result = _parse(self, args, namespace)
    finally:  # also after --help; a parse error exits with status 2
        mode["parsed"] = True
    if mode["now"] == "parse":
        raise Parsed()
    return result

argparse.ArgumentParser.__init__ = init
argparse.ArgumentParser.parse_args = parse_args
results_path, jobs, results = sys.argv[1], json.load(sys.stdin), []
for job in jobs:
    mode.update(now=job["mode"], parsed=False)
    saved_env, saved_path = dict(os.environ), list(sys.path)
    os.environ.update(job["env"])
    out = io.StringIO()
    code = None
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                if job["target"].startswith("-m "):
                    module = job["target"][3:]
                    sys.argv = [module, *job["argv"]]
                    runpy.run_module(module, run_name="__main__", alter_sys=True)
                else:
                    sys.argv = [job["target"], *job["argv"]]
                    sys.path[0] = os.path.dirname(os.path.abspath(job["target"]))
                    runpy.run_path(job["target"], run_name="__main__")
                code = 0
            except Parsed:
                code = 0
            except SystemExit as exit:
                code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
                if not isinstance(exit.code, (int, type(None))):
                    print(exit.code)
            except BaseException:
                traceback.print_exc()
                code = 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:] = saved_path
    results.append({"code": code, "parsed": mode["parsed"], "output": out.getvalue()[-3000:]})
with open(results_path, "w", encoding="utf-8") as handle:
    json.dump(results, handle)
"""


def run_commands(commands: list[Command], tmp_dir: Path) -> list[dict]:
    """Run one script's commands in one subprocess; one result per command."""
    out = tmp_dir / "results.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "MLFLOW_DISABLE_TELEMETRY": "true",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), env.get("PYTHONPATH", "")])
    jobs = [{"target": c.target, "argv": c.argv, "mode": c.mode, "env": c.env} for c in commands]
    proc = subprocess.run([sys.executable, "-c", DRIVER, str(out)], input=json.dumps(jobs),
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0 and out.is_file(), \
        f"the checking process failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return json.loads(out.read_text(encoding="utf-8"))


def failure(command: Command, result: dict) -> str | None:
    """Why a command's result is a failure, or None."""
    if result["code"] is None:
        return "the checking process failed"
    if result["code"] != 0:
        return f"exit status {result['code']}"
    if command.mode == "parse" and not result["parsed"]:
        return "the script ended without parsing its arguments with argparse"
    return None


COMMANDS = doc_commands()
# Commands that must fail, run in the same processes as the docs' commands of their scripts:
# a misspelled flag, an abbreviated one, a bad value, a missing required flag, a missing
# script, a dry run of a missing config; and one that must pass.
CONTROLS = [
    (Command("control:1", "", "sweeps/export.py", ["--mlflow-url", "sqlite:///x.db"]), False),
    (Command("control:2", "", "sweeps/export.py", ["--mlflow", "sqlite:///x.db"]), False),
    (Command("control:3", "", "sweeps/export.py", ["--top-k", "two"]), False),
    (Command("control:4", "", "sweeps/report.py", ["--out", "results/"]), False),
    (Command("control:5", "", "sweeps/no_such_script.py", []), False),
    (Command("control:6", "", "sweeps/pairs.py", ["--config", "no/such/sweep.yaml"]), False),
    (Command("control:7", "", "sweeps/export.py", ["--mlflow-uri", "sqlite:///x.db"]), True),
]
ALL = COMMANDS + [c for c, _ in CONTROLS]
_RESULTS: dict[str, dict[int, dict]] = {}  # target -> {index in ALL: result}


def result_of(index: int, tmp_path_factory) -> dict:
    target = ALL[index].target
    if target not in _RESULTS:
        indices = [i for i, c in enumerate(ALL) if c.target == target]
        try:
            results = run_commands([ALL[i] for i in indices], tmp_path_factory.mktemp("docs"))
        except (AssertionError, subprocess.TimeoutExpired) as err:  # reported once per command
            results = [{"code": None, "parsed": False, "output": str(err)[-3000:]}] * len(indices)
        _RESULTS[target] = dict(zip(indices, results, strict=True))
    return _RESULTS[target][index]


@pytest.mark.parametrize("index", range(len(COMMANDS)),
                         ids=[f"{c.where} {c.target} {' '.join(c.args)}"[:120] for c in COMMANDS])
def test_doc_command_parses(index, tmp_path_factory):
    command = COMMANDS[index]
    result = result_of(index, tmp_path_factory)
    why = failure(command, result)
    assert why is None, (
        f"{command.where}: this command does not work ({why}; checked as "
        f"{command.mode}: python {command.target} {shlex.join(command.argv)}):\n"
        f"    {command.text}\n--- output ---\n{result['output']}")


def test_the_docs_show_the_main_commands():
    """Extraction finds what the README must show; an empty list would pass vacuously."""
    shown = {(c.where.split(":")[0], c.target) for c in COMMANDS}
    for expected in [("README.md", "sweeps/pairs.py"), ("README.md", "sweeps/export.py"),
                     ("README.md", "-m metaxl_core.train")]:
        assert expected in shown, f"{expected} not found among the docs' commands"
    assert any(c.mode == "dry-run" for c in COMMANDS)


def test_extraction_reads_shell_like_a_shell():
    text = """
```bash
OMP_NUM_THREADS=1 python sweeps/grid.py --preset p.yaml \\
  --threads 1 --shard 0/2 &   # a comment
pip install -e ".[dev]"
ray exec c.yaml --tmux 'cd ~/x && python sweeps/pairs.py --address auto \\
  --mlflow-uri http://$(hostname -I | cut -d" " -f1):5000 2>&1 | tee log'
python -m metaxl_core.train --config trial.yaml [--field value ...]
python sweeps/pairs.py --config SWEEP.yaml
.venv/bin/python bench/vocab_trim.py --sentences 100 > out.txt
python -c "print(1)"; python other/tool.py --x
```

```yaml
python sweeps/pairs.py --not-shell
```
"""
    found = extract(text, "doc.md")
    assert [(c.where, c.target, c.args, c.env) for c in found] == [
        ("doc.md:3", "sweeps/grid.py", ["--preset", "p.yaml", "--threads", "1", "--shard", "0/2"],
         {"OMP_NUM_THREADS": "1"}),
        ("doc.md:6", "sweeps/pairs.py", ["--address", "auto", "--mlflow-uri", "http://SUBST:5000"], {}),
        ("doc.md:8", "-m metaxl_core.train", ["--config", "trial.yaml"], {}),
        ("doc.md:9", "sweeps/pairs.py", ["--config", "SWEEP.yaml"], {}),
        ("doc.md:10", "bench/vocab_trim.py", ["--sentences", "100"], {}),
    ]
    assert [c.template for c in found] == [False, True, False, True, False]


@pytest.mark.parametrize("control", range(len(CONTROLS)),
                         ids=[f"{c.target} {' '.join(c.args)}" for c, _ in CONTROLS])
def test_the_check_fails_a_broken_command(control, tmp_path_factory):
    command, works = CONTROLS[control]
    result = result_of(len(COMMANDS) + control, tmp_path_factory)
    assert (failure(command, result) is None) == works, (command, result)
    if command.args[:1] == ["--mlflow-url"]:
        assert "--mlflow-url" in result["output"]
