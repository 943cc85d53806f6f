"""Project habits that CI checks: `make test` lints, and every package says what it is for and may import."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from helpers import ROOT


def _recipe(target: str) -> list[str]:
    lines = (ROOT / "Makefile").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"{target}:", line))
    out = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        if not line.strip().startswith("#"):
            out.append(line.strip())
    return out


def test_make_test_runs_ruff_before_pytest():
    recipe = _recipe("test")
    ruff = [i for i, line in enumerate(recipe) if line == "$(BIN)/ruff check src tests benchmarks scripts"]
    pytest_ = [i for i, line in enumerate(recipe) if "-m pytest" in line]
    assert ruff and pytest_ and ruff[0] < pytest_[0], recipe


def test_every_package_docstring_says_what_it_is_for_and_may_import():
    packages = sorted(p for p in (ROOT / "src" / "editdecay").rglob("__init__.py"))
    assert len(packages) >= 10
    for init in packages:
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        name = init.parent.relative_to(ROOT / "src").as_posix()
        assert len(doc.splitlines()[0] if doc else "") > 20, f"{name}: no docstring saying what it is for"
        assert "may import" in doc.lower(), f"{name}/__init__.py: docstring does not say what it may import"


# ----------------------------------------------------------------------------------------------------------
# the import graph: one way down, no circles (every import counts: top-level, inside functions, TYPE_CHECKING)

SRC = ROOT / "src"

# The packages from the bottom up; a package imports only packages on an earlier line (docs/design.md). The
# pipeline runs edit -> finetune -> evaluate, but evaluate scores any model folder and imports neither edit nor
# finetune, while fine-tuning's tracker and preserve's re-edit score models: evaluate sits below both.
LAYERS = [
    "errors",
    "util groups stats",
    "artifacts",
    "models",
    "data",
    "edit",
    "evaluate",
    "preserve",
    "finetune",
    "erase analyze",
    "experiment",
    "report",
    "api",
    "commands",
    "cli",
]
# narrower than the layers allow, as each package's docstring says
NEVER = {
    "evaluate": {"edit"},
    "report": {"artifacts", "models", "data", "edit", "evaluate", "preserve", "finetune", "erase", "analyze",
               "experiment"},
}
# within a package: each module imports only the modules before it (the package docstrings' order)
MODULE_ORDER = {
    "edit": ["hparams_classes", "registry", "hparams", "hooks", "prompts", "keys", "replay", "targets_cache",
             "targets", "stats_text", "stats_cache", "stats", "linalg", "spread", "memit", "alphaedit", "api"],
    "experiment": ["store", "facts", "schema", "plan", "cost", "stages", "execute", "backends.local",
                   "backends.ray", "backends", "runner", "export", "grid"],
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (SRC / "editdecay").rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the editdecay modules it imports (``from editdecay.x import name`` counts as editdecay.x.name
    when that is a module, else editdecay.x)."""
    modules = _modules()

    def resolve(name: str) -> str:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        graph[name] = {resolve(t) for t in targets if t.split(".")[0] == "editdecay"} - {name, ""}
    return graph


def _package(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_the_import_graph_is_read_whole():
    graph = import_graph()
    assert "editdecay.edit.spread" in graph["editdecay.edit.memit"] | graph["editdecay.edit.api"]
    assert "editdecay.evaluate.api" in graph["editdecay.finetune.train"]  # an import inside a function counts


def test_no_import_circles():
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert circles == []


def test_no_package_imports_one_above_it():
    level = {pkg: i for i, line in enumerate(LAYERS) for pkg in line.split()}
    modules = _modules()
    assert {_package(m) for m in modules} - {""} == set(level), "a package is missing from LAYERS"
    bad = []
    for src, targets in import_graph().items():
        p = _package(src)
        for dst in targets:
            q = _package(dst)
            if not p or not q or p == q:
                continue  # the root package (the version check) imports nothing of the package
            if level[q] >= level[p] or q in NEVER.get(p, ()):
                bad.append(f"{src} -> {dst}")
    assert bad == []


def test_modules_inside_a_package_import_only_those_before_them():
    graph = import_graph()
    bad = []
    for package, order in MODULE_ORDER.items():
        names = {f"editdecay.{package}.{m}": i for i, m in enumerate(order)}
        assert {m for m in _modules() if m.startswith(f"editdecay.{package}.")} == set(names), package
        for src, i in names.items():
            bad += [f"{src} -> {dst}" for dst in graph[src] if dst in names and names[dst] >= i]
    assert bad == []


def test_commands_reach_the_stages_only_through_the_api():
    """The CLI wraps editdecay.api (README): a command imports api, artifacts, util and errors, no stage."""
    allowed = {"api", "artifacts", "util", "errors", "commands"}
    bad = [f"{src} -> {dst}" for src, targets in import_graph().items() if src.startswith("editdecay.commands.")
           for dst in targets if _package(dst) not in allowed]
    assert bad == []
