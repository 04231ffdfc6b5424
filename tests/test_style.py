"""Code style and structure: ruff, short functions, no import cycle, a self-contained repository.

snakefmt is checked in tests/test_workflow.py::test_snakefmt_clean. Each helper below is tested on a
small example first, so that a check that passes on the tree is known to be able to fail.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from conftest import IGNORED, REPO

PACKAGE = REPO / "src" / "diffrep"
LINTED = ["src", "scripts", "tests", "bench"]
MAX_FUNCTION_LINES = 80
# Written in pieces so that this file does not name what it looks for.
OUTSIDE_REFERENCES = ("../" + "shared", "FACTS" + ".md", "DESIGN" + ".md")


def _ruff(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ruff", *args], cwd=REPO, capture_output=True, text=True)


# ---------------------------------------------------------------- helpers


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """(qualified name, first line, length) of every function or method longer than `limit` lines.

    The length runs from the ``def`` line to the function's last line (decorators excluded,
    docstring and comments included), as ``ast`` reports them.
    """
    found = []

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            name = prefix
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    length = child.end_lineno - child.lineno + 1
                    if length > limit:
                        found.append((name, child.lineno, length))
                name += "."
            visit(child, name)

    visit(ast.parse(source), "")
    return found


def module_imports(source: str, module: str, modules: set[str]) -> set[str]:
    """The modules of `modules` (names inside the package) that `module`'s source imports.

    Every import counts, at module level or inside a function: ``import diffrep.x``, ``from
    diffrep import x`` (x a module), ``from diffrep.x import y``, ``from . import x``, ``from .x
    import y``.
    """
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "diffrep" and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = node.module.split(".")[0] if node.module else None
            elif node.module and node.module.split(".")[0] == "diffrep":
                parts = node.module.split(".")
                base = parts[1] if len(parts) > 1 else None
            else:
                continue
            if base is not None:
                found.add(base)
            else:  # from diffrep import x, y / from . import x, y
                found |= {a.name for a in node.names}
    return (found & modules) - {module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as a path ``[a, b, ..., a]``, or None if it has none."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def package_import_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    return {p.stem: module_imports(p.read_text(), p.stem, modules) for p in sorted(PACKAGE.glob("*.py"))}


def repository_files() -> list[Path]:
    """The tracked files (git ls-files), or every file outside the ignored folders without git."""
    proc = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True)
    if proc.returncode == 0 and proc.stdout:
        return [REPO / name for name in proc.stdout.decode().split("\0") if name]
    return [p for p in REPO.rglob("*") if p.is_file() and not IGNORED & set(p.relative_to(REPO).parts)]


def matching_lines(path: Path, matches) -> list[str]:
    """``file:line: text`` for every line of text file `path` for which `matches(line)` is true."""
    if not path.is_file():  # deleted in the work tree, still in the index
        return []
    data = path.read_bytes()
    if b"\0" in data[:8192]:  # binary (images)
        return []
    lines = enumerate(data.decode("utf-8", "replace").splitlines(), 1)
    return [f"{path.relative_to(REPO)}:{number}: {line.strip()}" for number, line in lines if matches(line)]


def outside_references(path: Path) -> list[str]:
    """``file:line: text`` for every line of `path` that points outside the repository."""
    return matching_lines(path, lambda line: any(ref in line for ref in OUTSIDE_REFERENCES))


# the word "issue" and a number: development tickets, which users of the repository cannot see
ISSUE_NUMBER = re.compile(r"\bissues? #?\d+\b", re.IGNORECASE)


# ---------------------------------------------------------------- the helpers can fail


def test_long_functions_finds_a_long_method_by_its_qualified_name():
    lines = ["class A:", "    def short(self):", "        pass", "", "    def long(self):"]
    lines += [f"        x{i} = {i}" for i in range(80)]
    source = "\n".join(lines) + "\n"
    assert long_functions(source) == [("A.long", 5, 81)]
    assert long_functions(source, limit=81) == []


def test_module_imports_sees_function_level_and_relative_imports():
    source = (
        "import os\nimport diffrep.alpha\nfrom diffrep import beta, not_a_module\n"
        "def f():\n    from diffrep.gamma import thing\n    from . import delta\n    from .eps import z\n"
    )
    modules = {"alpha", "beta", "gamma", "delta", "eps", "me"}
    assert module_imports(source, "me", modules) == {"alpha", "beta", "gamma", "delta", "eps"}


def test_find_cycle_names_the_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_outside_references_names_file_and_line(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    note = tmp_path / "note.md"
    note.write_text("fine\nsee " + OUTSIDE_REFERENCES[1] + "\n")
    assert outside_references(note) == [f"note.md:2: see {OUTSIDE_REFERENCES[1]}"]


# ---------------------------------------------------------------- the tree


def test_ruff_format_clean():
    proc = _ruff("format", "--check", *LINTED)
    clean = proc.returncode == 0
    assert clean, "ruff format would reformat (run `ruff format`):\n" + proc.stdout + proc.stderr


def test_ruff_check_clean():
    proc = _ruff("check", "--output-format", "concise", *LINTED)
    clean = proc.returncode == 0
    assert clean, "ruff check findings:\n" + proc.stdout + proc.stderr


def test_no_function_in_the_package_is_longer_than_80_lines():
    offenders = [
        f"{path.relative_to(REPO)}:{line} {name} ({length} lines)"
        for path in sorted(PACKAGE.glob("*.py"))
        for name, line, length in long_functions(path.read_text())
    ]
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)


def test_the_package_has_no_import_cycle():
    graph = package_import_graph()
    assert len(graph) > 10 and any(graph.values())  # the graph was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in src/diffrep: " + " -> ".join(cycle)


def test_no_reference_outside_the_repository():
    files = repository_files()
    assert any(p.name == "README.md" for p in files)
    hits = [hit for path in files for hit in outside_references(path)]
    assert not hits, "references to files outside the repository (link to docs/ instead):\n" + "\n".join(hits)


def test_no_development_issue_number_in_the_repository():
    files = [p for p in repository_files() if p.suffix not in (".csv", ".sha256")]  # data, not text
    hits = [hit for path in files for hit in matching_lines(path, ISSUE_NUMBER.search)]
    assert not hits, "development issue numbers, which users cannot see:\n" + "\n".join(hits)
