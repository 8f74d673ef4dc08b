from __future__ import annotations

import pytest

from m7b import __version__
from m7b.errors import EXIT_CODES


@pytest.mark.slow
def test_help_lists_only_working_commands(cli) -> None:
    result = cli("--help")
    assert result.code == 0
    for command in ("list", "show", "release"):
        assert command in result.stdout
    release = cli("release", "--help")
    assert "synth" in release.stdout and "create" in release.stdout


def test_version(cli) -> None:
    result = cli("--version")
    assert result.code == 0
    assert result.stdout.strip() == f"m7b {__version__}"


def test_usage_error_exit_code_2(cli) -> None:
    result = cli("show")
    assert result.code == 2
    assert "Missing argument" in result.stderr


@pytest.mark.slow
def test_errors_are_one_line_without_traceback_unless_debug(cli, m7b_home) -> None:
    result = cli("show", "no-such-release")
    assert result.code == 3
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    debug = cli("--debug", "show", "no-such-release")
    assert debug.code != 0 and "Traceback" in debug.stderr


def test_every_documented_exit_code_is_in_the_cli_reference() -> None:
    from pathlib import Path

    reference = (Path(__file__).parents[2] / "docs" / "cli.md").read_text(encoding="utf-8")
    for code in EXIT_CODES:
        assert f"| {code} |" in reference, f"exit code {code} is not documented in docs/cli.md"


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["fetch", "x", "--timeout", "-1"], "--timeout"),
        (["fetch", "x", "--timeout", "0"], "--timeout"),
        (["fetch", "x", "--timeout", "nan"], "--timeout"),
        (["fetch", "x", "--resume-interval", "0"], "--resume-interval"),
        (["seed", "x", "--interval", "0"], "--interval"),
        (["seed", "x", "--interval", "-5"], "--interval"),
        (["seed", "x", "--max-peers", "0"], "--max-peers"),
    ],
)
def test_a_timeout_or_interval_must_be_more_than_0_and_max_peers_at_least_1(
    args: list[str], flag: str, m7b_home
) -> None:
    from typer.testing import CliRunner

    from m7b.cli.app import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and flag in result.output
    assert not m7b_home.exists()  # refused before anything was looked up or written


def test_a_reader_that_goes_away_ends_the_command_quietly_with_141(m7b_home) -> None:
    import subprocess
    import sys

    from m7b.errors import EXIT_BROKEN_PIPE

    # like `m7b list --json | head -0`: the pipe's reader is gone before m7b writes its document
    proc = subprocess.Popen(
        [sys.executable, "-m", "m7b", "list", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    proc.stdout.close()
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_BROKEN_PIPE == 141
    assert stderr == b""
