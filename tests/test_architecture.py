"""The shape of the package: no module imports itself back through others, and the layer
contracts in ``.importlinter`` really fail when a module imports upward."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def _modules(src: Path) -> dict[str, tuple[Path, bool]]:
    """Every importable module under ``src/maestro``: name -> (file, is a package)."""
    modules = {}
    for path in sorted((src / "maestro").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        if all(part.isidentifier() for part in parts):  # migration files are not modules
            modules[".".join(parts)] = (path, is_package)
    return modules


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """module -> the modules of the package it imports, wherever the import statement
    stands (module level, in a function, under TYPE_CHECKING); ``from x import y``
    counts as importing ``x.y`` when that is a module, else ``x``."""
    modules = _modules(src)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    package = package[: len(package) - node.level + 1]
                    base = ".".join([*package, node.module] if node.module else package)
                else:
                    base = node.module or ""
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            else:
                continue
            imported.update(
                module for target in targets if target.startswith("maestro") and (module := known(target))
            )
        imported.discard(name)
        graph[name] = imported
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for target in edges:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                    break
                if target in on_stack:
                    low[node] = min(low[node], index[target])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(frozenset(component))
    return found


class TestImportCycles:
    def test_the_walk_sees_function_level_and_relative_imports(self, tmp_path: Path) -> None:
        package = tmp_path / "maestro"
        package.mkdir()
        (package / "__init__.py").write_text("")
        (package / "a.py").write_text("def f():\n    from maestro import b\n")
        (package / "b.py").write_text("from . import c\n")
        (package / "c.py").write_text("from maestro.a import f\n")
        graph = import_graph(tmp_path)
        assert graph["maestro.a"] == {"maestro.b"}
        assert graph["maestro.b"] == {"maestro.c"}
        assert cycles(graph) == [frozenset({"maestro.a", "maestro.b", "maestro.c"})]

    def test_no_module_imports_itself_back(self) -> None:
        found = [sorted(cycle) for cycle in cycles(import_graph())]
        assert found == [], f"import cycles: {found}"


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` on the copy of the package under ``root/src``, with its contracts."""
    environment = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run(
        [
            str(Path(sys.executable).with_name("lint-imports")),
            "--no-cache",
            "--config",
            str(root / ".importlinter"),
        ],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class TestLayerContracts:
    @pytest.fixture
    def copy(self, tmp_path: Path) -> Path:
        """The package and its contracts, copied so a test can break them in private."""
        shutil.copytree(
            SRC / "maestro", tmp_path / "src" / "maestro", ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
        return tmp_path

    def test_the_package_keeps_its_contracts(self, copy: Path) -> None:
        result = _lint_imports(copy)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "0 broken" in result.stdout

    def test_an_upward_import_breaks_the_layers(self, copy: Path) -> None:
        # projects sits below the feature domains: it may not reach into tracking.
        (copy / "src" / "maestro" / "projects" / "upward.py").write_text("import maestro.tracking.service\n")
        result = _lint_imports(copy)
        assert result.returncode != 0
        assert "BROKEN" in result.stdout
        assert "Layers: entry points" in result.stdout
        assert "maestro.projects.upward -> maestro.tracking.service" in result.stdout

    def test_a_feature_importing_another_breaks_their_independence(self, copy: Path) -> None:
        (copy / "src" / "maestro" / "files" / "sideways.py").write_text(
            "from maestro.tracking import models\n"
        )
        result = _lint_imports(copy)
        assert result.returncode != 0
        assert "BROKEN" in result.stdout
        assert "maestro.files.sideways -> maestro.tracking.models" in result.stdout
