"""The README's commands run as written (issue 10, items 19, 21, 27): every `python X.py ...`, `python -m mer.serve`,
`torchrun ... X.py`, `mer-builder ...` and `scripts/*.py` line of its bash blocks names an entry point that exists
and whose argument parser accepts those arguments (no unknown flag, no bad choice, no missing required argument)."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TORCHRUN_FLAGS_WITH_VALUE = {"--nproc_per_node", "--nnodes", "--rdzv-backend", "--rdzv-endpoint", "--node_rank"}


def readme_commands() -> list[tuple[str, list[str]]]:
    """(entry point, arguments) of each command line in the README's bash blocks (continuations joined,
    comments and shell variables dropped)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if not line or line.startswith(("#", "curl", "make", "source", "for ", "sbatch")):
                continue
            words = shlex.split(line.replace("$", ""), comments=True)
            if words[0] == "torchrun":  # torchrun's own flags, then the entry point
                i = 1
                while words[i].startswith("--"):
                    i += 2 if words[i] in TORCHRUN_FLAGS_WITH_VALUE and "=" not in words[i] else 1
                words = ["python", *words[i:]]
            if words[0] == "mer-builder":
                out.append(("mer-builder", words[1:]))
            elif words[:3] == ["python", "-m", "mer.serve"]:
                out.append(("mer.serve", words[3:]))
            elif words[0] == "python" and words[1].endswith(".py"):
                out.append((words[1], words[2:]))
    return out


def parser_of(entry: str):
    if entry == "mer-builder":
        from mer_builder.cli import build_parser
        return build_parser()
    if entry == "mer.serve":
        return importlib.import_module("mer.cli.serve").build_parser()
    script = (REPO / entry).read_text(encoding="utf-8")
    match = re.search(r"from (mer\.cli\.\w+) import main", script)
    if match is None:
        return None
    module = importlib.import_module(match.group(1))
    make = getattr(module, "build_parser", None) or getattr(module, "_parser", None)
    return make() if make is not None else None


COMMANDS = readme_commands()


def test_the_readme_has_the_walk_through_commands():
    entries = {e for e, _ in COMMANDS}
    assert {"mer-builder", "train.py", "evaluate.py", "train_hf_e2e.py", "cv.py", "predict.py"} <= entries
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize("entry, args", COMMANDS, ids=[f"{e} {' '.join(a)}"[:80] for e, a in COMMANDS])
def test_each_readme_command_names_an_entry_point_that_accepts_its_arguments(entry, args):
    if entry != "mer-builder" and entry != "mer.serve":
        assert (REPO / entry).is_file(), f"the README names {entry}, which does not exist"
    parser = parser_of(entry)
    if parser is None:
        pytest.skip(f"{entry} builds its parser inside main(): checked by its --help below")
    try:
        _, unknown = parser.parse_known_args(args)
    except SystemExit as exc:
        pytest.fail(f"README: `{entry} {' '.join(args)}` is refused by its parser (exit {exc.code})")
    assert not unknown, f"README: `{entry} {' '.join(args)}`: unknown arguments {unknown}"


@pytest.mark.parametrize("script", ["scripts/emodb_cv.py", "transcribe.py"])
def test_scripts_without_a_parser_object_answer_help_with_text_for_every_flag(script):
    proc = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO / "src"), "PATH": ""}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    flags = re.findall(r"^\s+(--[\w-]+)", proc.stdout, flags=re.M)
    assert flags
    for flag in flags:  # each option line carries a help text (on its line or the next)
        lines = proc.stdout.splitlines()
        i = next(n for n, ln in enumerate(lines) if ln.strip().startswith(flag))
        text = lines[i].strip()[len(flag):].split("  ", 1)[-1].strip() if "  " in lines[i].strip() else ""
        assert text or (i + 1 < len(lines) and lines[i + 1].startswith(" " * 10)), f"{script} {flag}: no help text"


def test_emodb_cv_without_the_corpus_is_one_line_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "emodb_cv.py"), "--emodb", str(tmp_path / "none"),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO,
                          env={"PYTHONPATH": f"{REPO / 'src'}:{REPO / 'mer_dataset_builder' / 'src'}", "PATH": ""},
                          timeout=120)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "none" in err[0], proc.stderr
