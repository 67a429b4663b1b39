"""The everyday CLI: every option says what it is for, --version, shell completion, and the
output option wherever it is written."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys

import pytest

from custos.cli.main import build_parser, hoist_options
from tests.servers.custos import CUSTOS


def _walk(parser: argparse.ArgumentParser, path: list[str]) -> list[tuple[str, str]]:
    missing = []
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            helped = {c.dest for c in a._choices_actions}
            for name, sp in a.choices.items():
                if name not in helped and not sp.description:
                    missing.append((" ".join(path), f"subcommand {name}"))
                missing += _walk(sp, [*path, name])
        elif not isinstance(a, argparse._HelpAction | argparse._VersionAction) and not a.help:
            missing.append((" ".join(path), "/".join(a.option_strings) or a.dest))
    return missing


def test_every_command_and_option_has_help() -> None:
    missing = _walk(build_parser(None), ["custos"])
    assert missing == [], "\n".join(f"{cmd}: {opt}" for cmd, opt in missing)


def test_version_names_what_is_installed() -> None:
    res = subprocess.run([*CUSTOS, "--version"], capture_output=True, text=True, check=True)
    assert res.stdout.startswith("custos 0.1.0") and "controlplane" in res.stdout and "agent" in res.stdout


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_completion_scripts_cover_the_commands(shell: str) -> None:
    res = subprocess.run([*CUSTOS, "completion", shell], capture_output=True, text=True, check=True)
    for word in ("access", "order", "verify-report", "--output", "make-weights"):
        assert word in res.stdout, word
    if shell == "bash":
        check = subprocess.run(["bash", "-n"], input=res.stdout, capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr
    elif shutil.which("zsh"):
        check = subprocess.run(["zsh", "-n"], input=res.stdout, capture_output=True, text=True, check=False)
        assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("argv", [
    ["-o", "json", "model", "list"], ["--output=json", "model", "list"], ["model", "list", "-o", "json"],
    ["--identity", "sec2", "-o", "id", "access", "show", "abc"],
])
def test_output_is_a_global_option(argv: list[str]) -> None:
    args = hoist_options(argv)
    ns = build_parser(args).parse_args(args)
    assert ns.output in ("json", "id")


def test_bad_output_choice_is_a_clear_error() -> None:
    res = subprocess.run([*CUSTOS, "-o", "yaml", "model", "list"], capture_output=True, text=True, check=False)
    assert res.returncode == 2 and "invalid choice: 'yaml'" in res.stderr and "Traceback" not in res.stderr
    assert sys.executable  # the interpreter the CLI ran under


def test_progress_shows_phase_rate_and_eta_on_a_terminal_only(capsys: pytest.CaptureFixture[str]) -> None:
    from custos.cli.transfer import _clock, _Progress

    p = _Progress("hashing", tty=True)
    p.t0 = 100.0
    assert p.line(0, 4096, 100.5) == "hashing     0.0%  0 B / 4.0 KiB  0 B/s  ETA -"
    assert p.line(1024, 4096, 101.0) == "hashing    25.0%  1.0 KiB / 4.0 KiB  1.0 KiB/s  ETA 0:03"
    assert p.line(4096, 4096, 102.0).endswith("done")
    assert _clock(3 * 3600 + 61) == "3:01:01"
    quiet = _Progress("uploading", tty=False)
    quiet(10, 100)
    quiet(100, 100)
    quiet.close()
    assert capsys.readouterr().err == "", "not a terminal: nothing"
    loud = _Progress("uploading", tty=True)
    loud(100, 100)
    loud.close()
    assert "uploading" in capsys.readouterr().err
