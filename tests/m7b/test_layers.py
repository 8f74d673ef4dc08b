"""The layers in docs/ARCHITECTURE.md are the code's: drawn statically from every import in the tree (function-level
imports too), no module imports a layer above its own or a sibling wing it may not, and no two modules import each
other, directly or round a longer cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {"m7b.cli": "m7b/cli", "m7b.mirror": "mirror", "m7b.verify": "verify", "m7b.runtime": "runtime"}
FOLDERS |= {"m7b.manifests": "manifests"}

# Bottom to top. A module imports its own layer or the ones below; the wings of one layer only as SIBLINGS allows.
BASE = {"m7b", "m7b.errors", "m7b.paths", "m7b.magnet", "m7b.address", "m7b.dtypes", "m7b.sizes", "m7b.progress"}
BASE |= {"m7b.atomic", "m7b.torrent", "m7b.owned"}
CORE = {"m7b.store", "m7b.locks", "m7b.release", "m7b.remove", "m7b.usage", "m7b.space", "m7b.synth", "m7b.torchzip"}
LAYERS: list[dict[str, set[str]]] = [
    {"base": BASE},
    {"manifests": {"m7b.manifests"}},
    {"core": CORE},
    {"verify": {"m7b.verify"}},
    {"mirror": {"m7b.mirror"}, "runtime": {"m7b.runtime"}},
    {"cli": {"m7b.cli", "m7b.__main__"}},
]
SIBLINGS: set[tuple[str, str]] = set()  # mirror and runtime never import each other


def all_modules(root: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted((root / "m7b").glob("*.py")):
        yield ("m7b" if path.stem == "__init__" else f"m7b.{path.stem}"), path
    for package, folder in FOLDERS.items():
        for path in sorted((root / folder).glob("*.py")):
            yield (package if path.stem == "__init__" else f"{package}.{path.stem}"), path


def imported(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(module imported, line) for each m7b import in the file; `from a import b` yields `a.b` when that is a module."""
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names]
        else:
            continue
        for target in targets:
            if target == "m7b" or target.startswith("m7b."):
                yield target, node.lineno


def placed(module: str) -> tuple[int, str] | None:
    best: tuple[int, str, int] | None = None
    for rank, wings in enumerate(LAYERS):
        for wing, prefixes in wings.items():
            for prefix in prefixes:
                is_match = module == prefix or (prefix != "m7b" and module.startswith(prefix + "."))
                if is_match and (best is None or len(prefix) > best[2]):
                    best = (rank, wing, len(prefix))
    return (best[0], best[1]) if best else None


def breaches(root: Path = ROOT) -> list[str]:
    found, known = [], {m for m, _ in all_modules(root)}
    for module, path in all_modules(root):
        here = placed(module)
        assert here, f"{module} is in no layer: place it in LAYERS (and in docs/ARCHITECTURE.md's picture)"
        for target, line in imported(module, path, known):
            there = placed(target)
            if there is None or there[1] == here[1]:
                continue
            upward = there[0] > here[0]
            across = there[0] == here[0] and (here[1], there[1]) not in SIBLINGS
            if upward or across:
                found.append(f"{path.relative_to(root)}:{line}: {here[1]} imports {target} ({there[1]})")
    return found


def cycles(root: Path = ROOT) -> list[list[str]]:
    graph: dict[str, set[str]] = {m: set() for m, _ in all_modules(root)}
    for module, path in all_modules(root):
        graph[module] |= {t for t, _ in imported(module, path, set(graph)) if t in graph and t != module}
    found, state = [], dict.fromkeys(graph, 0)  # 0 new, 1 on the path, 2 done

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state[nxt] == 1:
                found.append(trail[trail.index(nxt) :] + [node, nxt] if nxt in trail else [node, nxt])
            elif state[nxt] == 0:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if state[node] == 0:
            visit(node, [])
    return found


def test_no_module_imports_upward_or_across_the_documented_layers() -> None:
    assert breaches() == []


def test_no_import_cycle_between_modules() -> None:
    assert cycles() == []


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    """A negative control: the same checks on a tree where the manifests import the CLI, and verify and runtime
    import each other, find all three."""
    import shutil

    for name in ("m7b", "mirror", "verify", "runtime", "manifests"):
        shutil.copytree(ROOT / name, tmp_path / name, symlinks=True)
    (tmp_path / "manifests" / "bad.py").write_text("from m7b.cli.app import main\n")
    (tmp_path / "verify" / "bad.py").write_text("from m7b.runtime import model_bad\n")
    (tmp_path / "runtime" / "model_bad.py").write_text("from m7b.verify import bad\n")
    found = "\n".join(breaches(tmp_path))
    assert "manifests/bad.py:1: manifests imports m7b.cli.app (cli)" in found
    assert "verify/bad.py:1: verify imports m7b.runtime.model_bad (runtime)" in found
    assert any("m7b.verify.bad" in c and "m7b.runtime.model_bad" in c for c in cycles(tmp_path))
