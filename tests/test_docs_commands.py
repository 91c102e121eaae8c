"""Every command shown in README.md and docs/*.md runs as written, as a dry run.

Commands come from fenced ``bash``/``sh``/``console`` blocks (in ``console`` blocks only the
``$ `` lines) and from inline code spans that start with a command. Nothing is trained or
labelled: snakemake runs with ``-n`` (it must plan every target it names), make with ``-n``,
the ``selfexplain`` command and the benchmark scripts with ``--help`` on their sub-command
(every option the doc uses must be one they take), pytest with ``--collect-only``.
docs/log/ is a historical notebook and is not checked.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
SHELL_LANGS = {"bash", "sh", "shell", "console"}
# An inline code span is a command when it starts with one of these.
INLINE_COMMAND = re.compile(
    r"^(\.venv/bin/)?(snakemake|make|selfexplain|pytest)(\s|$)"
    r"|^(\.venv/bin/)?python3? (-m selfexplain|benchmarks/)"
)

# Commands that cannot be dry-run anywhere, with the reason (normalised with `normalise`).
# Empty today: every extracted command has a dry-run form in `dry_run`, with two adaptations
# commented there (`--report` is dropped, since a report needs a finished run; `--unlock` and
# `--directory` get a scratch directory). Not extracted at all, since they start with no
# command of INLINE_COMMAND: `kill -9`, `squeue --me`, `scancel`. Add an entry only for a
# command that needs what no test machine has (a GPU, a cluster, the network).
SKIP: dict[str, str] = {}

# Commands the docs show failing on purpose, with text their output must contain.
EXPECTED_ERRORS: dict[str, str] = {
    # README: how a bad config is refused
    "snakemake -n --config 'tasks=[ablaton]'": "'ablaton' is not allowed",
}


MIN_COMMANDS = 30  # the docs hold about 60; far fewer means the extractor broke
WORKERS = min(4, os.cpu_count() or 1)  # dry runs at a time (each is one busy process)


def _split(command: str) -> list[str]:
    return shlex.split(command, comments=True)


def normalise(command: str) -> str:
    """One spelling per command: shell words re-quoted, comments, continuations and a leading
    .venv/bin/ gone (`.venv/bin/snakemake X` and `snakemake X` are one check)."""
    words = _split(command)
    return shlex.join([words[0].removeprefix(".venv/bin/"), *words[1:]])


def _shell_lines(lines: list[str], console: bool) -> list[str]:
    """Commands of one fenced block: continuation lines joined; console: `$ ` lines only."""
    commands, current = [], None
    for line in lines:
        text = line.strip()
        if current is None:
            if console:
                if not text.startswith("$ "):
                    continue
                text = text[2:]
            if not text or text.startswith("#"):
                continue
            current = ""
        if text.endswith("\\"):
            current += text[:-1] + " "
            continue
        current += text
        commands.append(current)
        current = None
    return commands


def extract_commands(markdown: str) -> list[str]:
    """The shell commands a markdown page shows, in order, normalised, without repeats."""
    found, prose = [], []
    fence, lang, block = None, "", []
    for line in markdown.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence, lang, block = m.group(1), m.group(2).lower(), []
            prose.append("")
        elif fence is not None and line.strip().startswith(fence):
            if lang in SHELL_LANGS:
                found += _shell_lines(block, console=lang == "console")
            fence = None
        elif fence is not None:
            block.append(line)
        else:
            prose.append(line)
    for span in re.findall(r"`([^`]+)`", "\n".join(prose)):
        span = " ".join(span.split())  # a code span may run over a line break
        if INLINE_COMMAND.match(span):
            found.append(span)
    out: list[str] = []
    for command in found:
        if _split(command) and normalise(command) not in out:
            out.append(normalise(command))
    return out


def doc_commands() -> dict[str, list[str]]:
    """Every command of the checked docs -> the docs that show it."""
    where: dict[str, list[str]] = {}
    for path in DOCS:
        for command in extract_commands(path.read_text(encoding="utf-8")):
            where.setdefault(command, []).append(str(path.relative_to(REPO)))
    return where


COMMANDS = doc_commands()
SKIPPED = {normalise(c): why for c, why in SKIP.items()}
FAILING = {normalise(c): text for c, text in EXPECTED_ERRORS.items()}


def _program(words: list[str]) -> list[str]:
    """The words with python as this interpreter (normalise has dropped .venv/bin/)."""
    if words[0] in ("python", "python3"):
        return [sys.executable, *words[1:]]
    return words


def _options(words: list[str]) -> list[str]:
    return sorted({w.split("=", 1)[0] for w in words if w.startswith("--")})


def _lists(help_text: str, option: str) -> bool:
    """Whether a --help text names this option (not merely a longer one)."""
    return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", help_text) is not None


def _leading_words(words: list[str]) -> list[str]:
    """Sub-commands and positionals before the first option (`ask patching`, `compare A B`)."""
    out = []
    for w in words:
        if w.startswith("-"):
            break
        out.append(w)
    return out


def _work_dir(tmp_path: Path, name: str) -> Path:
    """A scratch working directory whose relative config paths resolve as in the repo."""
    d = tmp_path / name
    d.mkdir(parents=True, exist_ok=True)
    if not (d / "config").exists():
        (d / "config").symlink_to(REPO / "config")
    return d


def dry_run(command: str, tmp_path: Path) -> tuple[list[str], list[str]]:
    """The argv that checks `command` without doing its work, and options its help must list."""
    words = _program(_split(command))
    prog, args = words[0], words[1:]
    if prog == "snakemake":
        args = list(args)
        if "--report" in args:  # a report needs a finished run: check the rest of the command
            i = args.index("--report")
            del args[i : i + 2]
        if "--directory" in args:  # keep a scratch working directory out of the checkout
            i = args.index("--directory") + 1
            args[i] = str(_work_dir(tmp_path, args[i]))
        if "--unlock" in args:
            # runs for real, in a scratch directory: in the checkout it would remove the lock
            # of a pipeline that may be running there
            if "--directory" not in args:
                args += ["--directory", str(_work_dir(tmp_path, "unlock"))]
            return [sys.executable, "-m", "snakemake", *args], []
        flags = [] if {"-n", "--dry-run", "--dryrun"} & set(args) else ["-n"]
        if not {"--cores", "-c", "--jobs", "-j"} & set(args):
            flags += ["--cores", "1"]
        return [sys.executable, "-m", "snakemake", *flags, *args], []
    if prog == "make":
        return ["make", "-n", *args], []
    if prog == "pytest":
        return [sys.executable, "-m", "pytest", *args, "--collect-only", "-q"], []
    if prog == "selfexplain" or args[:2] in (["-m", "selfexplain"], ["-m", "selfexplain.cli"]):
        rest = args if prog == "selfexplain" else args[2:]
        head = [sys.executable, "-m", "selfexplain.cli"]
        return [*head, *_leading_words(rest), "--help"], _options(rest)
    if len(args) > 1 and args[0] == "-m" and args[1].startswith("selfexplain."):
        module, rest = args[1], args[2:]  # a library module's own entry point
        return [sys.executable, "-m", module, *_leading_words(rest), "--help"], _options(rest)
    if prog == sys.executable and args and args[0].startswith("benchmarks/"):
        script, rest = args[0], args[1:]
        return [prog, script, *_leading_words(rest), "--help"], _options(rest)
    raise AssertionError(f"no dry-run form for {command!r}: add one, or a SKIP entry")


def run(argv: list[str]) -> subprocess.CompletedProcess:
    """argv from the repository root, offline, with this checkout's package first."""
    path = [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(path),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    return subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


# --- the extractor itself -------------------------------------------------------------------

HAND_WRITTEN = """\
Run `make setup` first; `make_prompts` is a rule, not a command, and so is `snakemake:` prose.

```bash
make run    # set up and run
# a comment line
snakemake --cores 2 \\
  --configfile config/quick.yaml   # a trailing comment
snakemake --config 'ablation={"n_per_kind": 160}'
```

```console
$ .venv/bin/selfexplain ask ablation --explainer DIR \\
      --prompt "The author of Hamlet is" --out a.jsonl
has_changed_f1=0.5 n=3
$ make run
```

```python
snakemake = "not a shell block"
```

```
$ snakemake -n   (an untagged block is not read)
```

Inline, over a line break: `python benchmarks/one_cell.py
--task patching`, and `pytest -m "not e2e"`; `.venv/bin/snakemake --lint`.
"""


def test_extractor_reads_blocks_spans_and_continuations():
    assert extract_commands(HAND_WRITTEN) == [
        "make run",
        "snakemake --cores 2 --configfile config/quick.yaml",
        "snakemake --config 'ablation={\"n_per_kind\": 160}'",
        "selfexplain ask ablation --explainer DIR --prompt 'The author of Hamlet is' --out a.jsonl",
        "make setup",
        "python benchmarks/one_cell.py --task patching",
        "pytest -m 'not e2e'",
        "snakemake --lint",
    ]


def test_dry_run_forms(tmp_path):
    py = sys.executable
    argv, _ = dry_run("snakemake --cores 2 results/x.csv", tmp_path)
    assert argv == [py, "-m", "snakemake", "-n", "--cores", "2", "results/x.csv"]
    argv, _ = dry_run("snakemake --report results/report.html", tmp_path)
    assert argv == [py, "-m", "snakemake", "-n", "--cores", "1"]
    argv, opts = dry_run("selfexplain ask patching --explainer DIR --threshold=-0.5", tmp_path)
    assert argv == [py, "-m", "selfexplain.cli", "ask", "patching", "--help"]
    assert opts == ["--explainer", "--threshold"]
    argv, _ = dry_run("python benchmarks/token_identity_runs.py compare a b", tmp_path)
    assert argv == [py, "benchmarks/token_identity_runs.py", "compare", "a", "b", "--help"]
    assert dry_run("make run", tmp_path)[0] == ["make", "-n", "run"]
    argv, _ = dry_run("snakemake --unlock", tmp_path)
    assert argv == [py, "-m", "snakemake", "--unlock", "--directory", str(tmp_path / "unlock")]
    assert (tmp_path / "unlock/config").resolve() == REPO / "config"
    assert _lists("  --n N  test questions", "--n")
    assert not _lists("  --n-test N", "--n")


def test_the_docs_show_commands():
    assert len(COMMANDS) >= MIN_COMMANDS, sorted(COMMANDS)
    shown = {doc for docs in COMMANDS.values() for doc in docs}
    assert {"README.md", "docs/results.md", "docs/cli.md", "docs/reliability.md"} <= shown


def test_skip_and_error_lists_name_shown_commands():
    stale = [c for c in (*SKIPPED, *FAILING) if c not in COMMANDS]
    assert not stale, f"no longer in the docs: {stale}"


# --- every command of the docs --------------------------------------------------------------


def check(command: str, scratch: Path) -> tuple[list[str], list[str], subprocess.CompletedProcess]:
    argv, options = dry_run(command, scratch)
    return argv, options, run(argv)


@pytest.fixture(scope="module")
def outcomes(request, tmp_path_factory) -> dict[str, Future]:
    """The selected commands' dry runs, started together, WORKERS at a time."""
    selected = [
        item.callspec.params["command"]
        for item in request.session.items
        if getattr(item, "originalname", None) == "test_doc_command_runs"
    ]
    scratch = tmp_path_factory.mktemp("doc_commands")
    with ThreadPoolExecutor(WORKERS) as pool:
        futures = {
            c: pool.submit(check, c, scratch / f"c{i}")
            for i, c in enumerate(selected)
            if c not in SKIPPED
        }
        yield futures
        pool.shutdown(cancel_futures=True)


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=lambda c: c[:80])
def test_doc_command_runs(command, outcomes):
    if command in SKIPPED:
        pytest.skip(SKIPPED[command])
    argv, options, done = outcomes[command].result()
    output = done.stdout + done.stderr
    where = ", ".join(COMMANDS[command])
    expected_error = FAILING.get(command)
    if expected_error is not None:
        assert done.returncode != 0 and expected_error in output, (where, output[-3000:])
        return
    ran = shlex.join(argv)
    assert done.returncode == 0, f"{command}\n(in {where}; ran {ran})\n{output[-3000:]}"
    missing = [o for o in options if not _lists(done.stdout, o)]
    assert not missing, f"{command} (in {where}): options not in its --help: {missing}"
