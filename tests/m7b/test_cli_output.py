"""The CLI is one list of commands; with --json an error is a JSON document on stdout."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from m7b.errors import InvalidInputError


def test_show_unknown_release_as_json_is_an_error_document(cli, m7b_home) -> None:
    result = cli("show", "nosuch", "--json")
    assert result.code == 3
    doc = json.loads(result.stdout)
    assert doc["exit_code"] == 3 and "unknown release 'nosuch'" in doc["error"]


def test_a_json_lines_stream_ends_with_an_error_event(cli, m7b_home) -> None:
    result = cli("fetch", "nosuch", "--json")
    assert result.code == 3
    last = json.loads(result.stdout.strip().splitlines()[-1])
    assert last["event"] == "error" and last["exit_code"] == 3


@pytest.mark.slow
def test_a_library_field_is_worded_as_the_cli_flag(cli, m7b_home, tiny_release_src) -> None:
    result = cli("run", tiny_release_src, "--prompt", "Hi", "--max-tokens", "0", "--json")
    assert result.code == 4
    doc = json.loads(result.stdout)
    assert doc["error"].startswith("--max-tokens must be at least 1") and doc["field"] == "max_tokens"


def test_library_errors_carry_the_field_and_never_name_a_flag() -> None:
    from m7b.runtime.generate import GenerationConfig
    from m7b.runtime.sampling import SamplingConfig

    for make, field in (
        (lambda: GenerationConfig(max_tokens=0).validate(), "max_tokens"),
        (lambda: SamplingConfig(temperature=-1).validate(), "temperature"),
        (lambda: SamplingConfig(top_p=2).validate(), "top_p"),
    ):
        with pytest.raises(InvalidInputError) as caught:
            make()
        assert caught.value.data["field"] == field and "--" not in str(caught.value)


def test_every_command_is_listed_once_in_the_app_and_no_module_registers_itself() -> None:
    from m7b.cli.app import COMMANDS, RELEASE_COMMANDS

    names = [name for name, _ in COMMANDS]
    assert len(names) == len(set(names))
    readme = (Path(__file__).parents[2] / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `m7b ([a-z]+)", readme, re.M)) - {"release"}
    assert documented == set(names)  # every command is in the README's table, and nothing else
    assert [name for name, _ in RELEASE_COMMANDS] == ["synth", "create", "sign"]
    modules = [m for m in (Path(__file__).parents[2] / "m7b" / "cli").glob("*.py") if m.name != "app.py"]
    assert len(modules) >= 8
    for module in modules:
        text = module.read_text()
        assert "from m7b.cli.app import" not in text and ".command(" not in text, module.name
        assert 'typer.Option("--json"' not in text or module.name == "options.py", module.name


def test_show_a_folder_without_a_manifest_omits_absent_facts_and_says_it_runs(cli, m7b_home, tiny_release) -> None:
    human = cli("show", tiny_release)
    assert human.code == 0, human.stderr
    assert "None" not in human.stdout and "runtime: supported" in human.stdout
    doc = json.loads(cli("show", tiny_release, "--json").stdout)
    assert doc["runtime"] == {"supported": True} and doc["manifest"] is False
    assert None not in doc.values() and Path(doc["path"]) == tiny_release.resolve()


def test_show_a_mixture_of_experts_folder_says_the_runtime_runs_it(cli, m7b_home, mixtral_tiny) -> None:
    human = cli("show", mixtral_tiny)
    assert human.code == 0, human.stderr
    assert "runtime: supported" in human.stdout and "None" not in human.stdout
    doc = json.loads(cli("show", mixtral_tiny, "--json").stdout)
    assert doc["runtime"] == {"supported": True}


@pytest.mark.parametrize("name", ["mixtral-8x7b-32kseqlen", "mixtral-8x22b"])
def test_show_the_mixtral_releases_says_the_runtime_supports_them(cli, m7b_home, name) -> None:
    human = cli("show", name)
    assert human.code == 0, human.stderr
    assert "runtime: supported (mixture of experts, 8 experts, 2 per token)" in human.stdout
    doc = json.loads(cli("show", name, "--json").stdout)
    assert doc["runtime"] == {"supported": True}
