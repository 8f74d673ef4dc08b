"""The docs a user reads are checked against the code: docs/cli.md has a section for every command of the typer
app with every option it takes (and nothing the app lacks), --help shows metavars a user understands and never
typer's type labels, README and ARCHITECTURE keep to their length, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from m7b.cli.app import COMMANDS, RELEASE_COMMANDS, app
from m7b.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parents[2]
CLI_MD = ROOT / "docs" / "cli.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def app_commands(root: Any = None) -> dict[str, Any]:
    """Every command of the app as click sees it, by its name after `m7b` (`fetch`, `release synth`)."""
    group = root if root is not None else typer.main.get_command(app)
    found: dict[str, Any] = {}
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            found |= {f"{name} {sub}": c for sub, c in app_commands(command).items()}
        else:
            found[name] = command
    return found


def long_flags(command: Any) -> set[str]:
    """Every `--flag` a command (or the root group) defines, negative forms (`--no-hybrid`) included; not --help."""
    params = [p for p in command.params if p.param_type_name == "option"]
    return {o for p in params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")} - {"--help"}


def sections(text: str) -> dict[str, str]:
    """The text under each `## Heading`, by heading."""
    parts = re.split(r"^## ", text, flags=re.M)[1:]
    return {part.split("\n", 1)[0].strip(): part for part in parts}


def documented_flags(section: str) -> set[str]:
    """The flags of a section's options table: rows whose first cell starts with `--…`."""
    cells = [line.split(" | ")[0] for line in section.splitlines() if line.startswith("| `--")]
    return {flag for cell in cells for flag in re.findall(r"--[a-z0-9][a-z0-9-]*", cell)}


def cli_doc_problems(text: str, commands: dict[str, Any], root: Any) -> list[str]:
    """What docs/cli.md says that the app does not do, or leaves out of what it does."""
    found = sections(text)
    documented = {heading.removeprefix("m7b "): body for heading, body in found.items() if heading.startswith("m7b ")}
    problems = [f"`m7b {name}` has no `## m7b {name}` section" for name in sorted(set(commands) - set(documented))]
    problems += [f"`## m7b {name}` documents no command of the app" for name in sorted(set(documented) - set(commands))]
    for name in sorted(set(commands) & set(documented)):
        body, flags = documented[name], long_flags(commands[name])
        problems += [
            f"m7b {name}: {flag} is not in its options table" for flag in sorted(flags - documented_flags(body))
        ]
        problems += [f"m7b {name}: {flag} is documented but absent" for flag in sorted(documented_flags(body) - flags)]
        if f"`m7b {name}" not in body.split("\n", 3)[2]:
            problems.append(f"m7b {name}: the section does not open with its synopsis")
        if "Example" not in body:
            problems.append(f"m7b {name}: no example")
        codes = re.search(r"\*\*Exit codes\*\*: (.*?)(?:\n\n|\Z)", body, re.S)
        if not codes:
            problems.append(f"m7b {name}: no **Exit codes** line")
        else:
            unknown = {int(c) for c in re.findall(r"\b\d+\b", codes.group(1))} - set(EXIT_CODES)
            problems += [f"m7b {name}: exit code {c} is not in m7b/errors.py" for c in sorted(unknown)]
    global_section = found.get("Global options", "")
    problems += [
        f"global option {f} is not documented" for f in sorted(long_flags(root) - documented_flags(global_section))
    ]
    problems += [
        f"global option {f} is documented but absent"
        for f in sorted(documented_flags(global_section) - long_flags(root))
    ]
    return problems


def test_every_command_and_option_of_the_app_is_in_docs_cli_md_and_nothing_else() -> None:
    root = typer.main.get_command(app)
    commands = app_commands(root)
    assert set(commands) == {n for n, _ in COMMANDS} | {f"release {n}" for n, _ in RELEASE_COMMANDS}
    assert cli_doc_problems(CLI_MD.read_text(encoding="utf-8"), commands, root) == []


def test_the_cli_doc_check_sees_a_missing_command_a_missing_option_and_a_stale_one() -> None:
    """A negative control: the same check on docs/cli.md with `m7b du`'s section gone, fetch's --repair row gone,
    and a --nope row added to seed."""
    root = typer.main.get_command(app)
    text = CLI_MD.read_text(encoding="utf-8")
    du = sections(text)["m7b du"]
    doctored = text.replace("## " + du, "")
    doctored = "\n".join(line for line in doctored.splitlines() if not line.startswith("| `--repair`"))
    doctored = doctored.replace("| `--max-peers N` |", "| `--nope` | not an option |\n| `--max-peers N` |")
    problems = cli_doc_problems(doctored, app_commands(root), root)
    assert "`m7b du` has no `## m7b du` section" in problems
    assert "m7b fetch: --repair is not in its options table" in problems
    assert "m7b seed: --nope is documented but absent" in problems


def test_docs_cli_md_lists_every_exit_code() -> None:
    table = sections(CLI_MD.read_text(encoding="utf-8"))["Exit codes"]
    listed = {int(c) for c in re.findall(r"^\| (\d+) \|", table, re.M)}
    assert listed == set(EXIT_CODES)


TYPE_LABEL = re.compile(r"<(?:bool|int|float|str|text|path|file|list|tuple|dict|choice|datetime|uuid)\b[^>]*>", re.I)


def type_labels(help_text: str) -> list[str]:
    return TYPE_LABEL.findall(help_text)


def help_of(typer_app: typer.Typer, *args: str) -> str:
    result = CliRunner().invoke(typer_app, [*args, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("args", [(), ("release",), *[tuple(name.split()) for name in app_commands()]])
def test_help_shows_metavars_a_user_understands_never_type_labels(args: tuple[str, ...]) -> None:
    text = help_of(app, *args)
    assert "Usage:" in text
    assert type_labels(text) == []


def test_every_option_that_takes_a_value_names_it() -> None:
    for name, command in app_commands().items():
        for param in command.params:
            if not getattr(param, "is_flag", False):
                assert param.metavar, f"m7b {name} {param.opts[0]}: no metavar (typer would show its type)"


def test_the_help_check_sees_a_type_label() -> None:
    """A negative control: a plain typer app shows `<int>` and `<bool>`, and the check finds them."""
    plain = typer.Typer()

    @plain.command()
    def count(n: int = 1, loud: bool = False) -> None:
        """Count."""

    assert {label.lower() for label in type_labels(help_of(plain))} >= {"<int>", "<bool>"}


def words(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").split())


def test_readme_and_architecture_keep_to_their_length() -> None:
    assert words(ROOT / "README.md") <= 1500
    assert words(ROOT / "docs" / "ARCHITECTURE.md") <= 2500


def test_readme_opens_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = text.split("```", 2)[1]
    assert "scripts/setup && python -m m7b demo" in first_block and "python -m pytest -q" in first_block
    assert len(text.split("```", 1)[0].split()) < 120  # a short intro, then the commands


def test_architecture_points_nowhere_outside_the_repository() -> None:
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    assert not re.search(r"\]\((?:https?:|mailto:|/)", text)
    assert "DESIGN.md" not in text and "shared/" not in text


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.M):
        base = slug(heading)
        found.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return found


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def broken_links(pages: list[Path]) -> list[str]:
    broken = []
    for page in pages:
        text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):
                continue  # http:, https:, mailto: — not the repository's
            file_part, _, anchor = target.partition("#")
            path = (page.parent / file_part).resolve() if file_part else page
            if not path.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                broken.append(f"{page.name}: {target} (no such heading)")
    return broken


def test_every_relative_link_in_the_docs_resolves() -> None:
    assert broken_links(PAGES) == []


def test_the_link_check_sees_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## A heading\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#a-heading) [gone](nowhere.md) [bad](other.md#no-heading) [web](https://example.org)\n",
        encoding="utf-8",
    )
    assert broken_links([page]) == [
        "page.md: nowhere.md (no such file)",
        "page.md: other.md#no-heading (no such heading)",
    ]
