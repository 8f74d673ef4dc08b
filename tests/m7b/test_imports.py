"""Imports resolve statically from a plain checkout: every `m7b.*` module named anywhere in the tree is a file of
this checkout under `m7b/` (the top-level folders are reached through the symlinks in `m7b/`)."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("m7b", "mirror", "verify", "runtime", "manifests", "tests", "bench")
LINKED = ("mirror", "verify", "runtime", "manifests")


def module_file(root: Path, dotted: str) -> Path | None:
    base = root.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _names_defined(path: Path) -> frozenset[str]:
    names: set[str] = set()
    for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(n.name)
        elif isinstance(n, ast.Assign | ast.AnnAssign):
            targets = n.targets if isinstance(n, ast.Assign) else [n.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(n, ast.Import | ast.ImportFrom):
            names |= {a.asname or a.name.split(".")[0] for a in n.names}
    return frozenset(names)


def unresolved_imports(root: Path) -> list[str]:
    """`file:line: module[.name]` for every absolute m7b import that names no module or name of this checkout."""
    problems = []
    for top in SOURCES:
        for path in sorted((root / top).rglob("*.py")):  # rglob does not descend into the links
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    wanted = [(a.name, None) for a in node.names if a.name.split(".")[0] == "m7b"]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("m7b"):
                    wanted = [(node.module, a.name) for a in node.names]
                else:
                    continue
                for module, name in wanted:
                    found = module_file(root, module)
                    ok = found is not None and (
                        name in (None, "*")
                        or module_file(root, f"{module}.{name}") is not None
                        or name in _names_defined(found)
                    )
                    if not ok:
                        where = f"{module}.{name}" if name else module
                        problems.append(f"{path.relative_to(root)}:{node.lineno}: {where}")
    return problems


def test_the_subpackages_are_links_to_the_top_level_folders() -> None:
    for name in LINKED:
        link = ROOT / "m7b" / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve(), link


@pytest.mark.slow
def test_every_m7b_import_resolves_to_a_file_of_this_checkout() -> None:
    assert unresolved_imports(ROOT) == []


def test_an_import_of_a_missing_module_or_name_is_reported(tmp_path: Path) -> None:
    for top in SOURCES:
        (tmp_path / top).mkdir()
    (tmp_path / "m7b" / "__init__.py").write_text("")
    (tmp_path / "m7b" / "store.py").write_text("class Store: ...\n")
    (tmp_path / "mirror" / "fetch.py").write_text(
        "from m7b.store import Store\nfrom m7b.store import Nope\nimport m7b.mirror.gone\n"
    )
    assert unresolved_imports(tmp_path) == ["mirror/fetch.py:2: m7b.store.Nope", "mirror/fetch.py:3: m7b.mirror.gone"]
