"""Issue 17: manifests that broke commands (a RecursionError, a quadratic scan, a quadratic highlighter) are refused
with exit 4 within stated bounds; a broken manifest in the store's folder is named in a warning, never fatal."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from m7b.errors import InvalidInputError
from m7b.manifests import loader
from m7b.manifests.loader import MAX_FILES, MAX_LABEL, MAX_MANIFEST_BYTES, load_manifest, scan_manifests

HEAD = 'schema = 1\nname = "{name}"\ntitle = "{title}"\npublisher = "p"\nlicense = "MIT"\n'
SOURCES = '[sources]\nrelease = "test"\n'


def manifest_text(name: str = "bounded", title: str = "t", body: str = "", sources: str = "") -> str:
    return HEAD.format(name=name, title=title) + body + SOURCES + sources


def nested(depth: int) -> str:
    return manifest_text(sources="x = " + "[" * depth + "]" * depth + "\n")


def files(n: int) -> str:
    body = "".join(f'[[files]]\npath = "f{i}"\nsize = 1\n' for i in range(n))
    return manifest_text(body=body, sources="".join(f'"files.f{i}" = "test"\n' for i in range(n)))


@pytest.fixture
def write(tmp_path: Path):
    def make(text: str, name: str = "m.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return make


@pytest.mark.parametrize("command", [("show",), ("verify",), ("fetch", "--timeout", "1")])
def test_a_manifest_nested_1000_deep_is_refused_by_show_verify_fetch(cli, m7b_home, write, command) -> None:
    path = write(nested(1000))
    assert len(path.read_bytes()) < 2200  # 2 KB
    result = cli(*command, path)
    assert result.code == 4, result.stderr
    assert "nested too deeply" in result.stderr and "internal error" not in result.stderr


@pytest.mark.parametrize("depth", [9, 50, 1000, 100_000])
def test_nesting_beyond_the_cap_is_invalid_input_at_any_depth(write, depth) -> None:
    with pytest.raises(InvalidInputError, match="nested"):
        load_manifest(write(nested(depth)))


def test_a_broken_manifest_in_the_store_is_a_warning_for_list_and_show(cli, m7b_home) -> None:
    (m7b_home / "manifests").mkdir(parents=True)
    bad = m7b_home / "manifests" / "deep.toml"
    bad.write_text(nested(1000))
    (m7b_home / "manifests" / "mine.toml").write_text(manifest_text(name="mine"))
    listed = cli("list", "--json")
    assert listed.code == 0, listed.stderr
    assert f"warning: skipped manifest {bad}: tables or lists nested too deeply" in listed.stderr
    assert '"name": "mine"' in listed.stdout and '"skipped_manifests"' in listed.stdout
    shown = cli("show", "mistral-7b-v0.1")
    assert shown.code == 0 and "Mistral 7B v0.1" in shown.stdout
    assert f"skipped manifest {bad}" in shown.stderr


def test_two_manifests_with_one_name_skip_the_second(m7b_home, tmp_path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "a.toml").write_text(manifest_text(name="twin"))
    (folder / "b.toml").write_text(manifest_text(name="twin"))
    scan = scan_manifests(folder)
    assert scan.found["twin"].origin == folder / "a.toml"
    assert [(s.path, "already defined" in s.reason) for s in scan.skipped] == [(folder / "b.toml", True)]


@pytest.mark.parametrize("size", [MAX_LABEL + 1, 16 << 10, 64 << 10])
def test_a_title_longer_than_any_real_one_is_refused(cli, m7b_home, write, size) -> None:
    result = cli("show", write(manifest_text(title="w" * size)))
    assert result.code == 4
    assert f"field 'title': expected at most {MAX_LABEL} characters, found {size:,}" in result.stderr


def test_show_prints_a_long_word_title_and_markup_as_written(cli, m7b_home, write) -> None:
    title = "w" * MAX_LABEL
    assert cli("show", write(manifest_text(title=title))).stdout.startswith(title)
    result = cli("show", write(manifest_text(title="[/bold] [red]x"), "markup.toml"))
    assert result.code == 0, result.stderr
    assert result.stdout.startswith("[/bold] [red]x (bounded)")


def test_show_does_not_run_the_highlighter_over_manifest_text(monkeypatch, m7b_home, write, capsys) -> None:
    """rich's highlighter is what was quadratic on one long word (64 KB: 55 s): it must not see the title."""
    from rich.highlighter import ReprHighlighter

    from m7b.cli.app import main

    seen: list[str] = []
    original = ReprHighlighter.highlight

    def spy(self: ReprHighlighter, text) -> None:
        seen.append(text.plain)
        original(self, text)

    monkeypatch.setattr(ReprHighlighter, "highlight", spy)
    monkeypatch.setattr(sys, "argv", ["m7b", "show", str(write(manifest_text(title="q" * MAX_LABEL)))])
    main()  # returns on success (an error would exit)
    assert "q" * MAX_LABEL in capsys.readouterr().out
    assert not [text for text in seen if "q" * 64 in text]


def test_the_file_count_is_capped(write) -> None:
    assert len(load_manifest(write(files(MAX_FILES))).files) == MAX_FILES
    with pytest.raises(InvalidInputError, match=f"field 'files': expected at most {MAX_FILES:,} entries"):
        load_manifest(write(files(MAX_FILES + 1)))


def test_the_duplicate_check_is_one_set_lookup_per_file(write, monkeypatch) -> None:
    """Loading is linear: no file's path is compared with every other's (20,000 files took 13-17 s)."""
    compared = 0
    original = loader.FileFacts

    class Counting(original):  # type: ignore[misc, valid-type]
        def __getattribute__(self, name: str):
            nonlocal compared
            if name == "path":
                compared += 1
            return object.__getattribute__(self, name)

    monkeypatch.setattr(loader, "FileFacts", Counting)
    load_manifest(write(files(MAX_FILES)))
    assert compared <= 3 * MAX_FILES


def test_a_manifest_over_the_byte_cap_is_refused_unread(write) -> None:
    path = write(manifest_text(sources=f'pad = "{"x" * MAX_MANIFEST_BYTES}"\n'))
    with pytest.raises(InvalidInputError, match=f"over {MAX_MANIFEST_BYTES:,} bytes"):
        load_manifest(path)


def test_a_file_path_with_an_element_too_long_for_a_file_system_is_refused(write) -> None:
    path = write(manifest_text(body=f'[[files]]\npath = "{"a" * 256}"\n'))
    with pytest.raises(InvalidInputError, match="element of 256 bytes"):
        load_manifest(path)
