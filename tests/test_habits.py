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
    "deltas",
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
    "experiment": ["store_schema", "store", "facts", "schema", "plan", "cost", "measured", "stages", "execute", "backends.local",
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


# names the package offers that nothing in it uses yet, kept on purpose (each says why)
PUBLIC_UNUSED = {
    "score_continuations": "evaluate.scoring's documented entry: per-token log-probs of (prompt, continuation)",
    "register": "edit.registry's extension point: add an editing method from outside the package",
    "dtype_name": "models.device: a dtype's name for manifests and JSON",
}


def test_no_dead_or_test_only_code_in_src():
    """Every module-level function, class and constant in src is used by src, benchmarks or scripts (or is one
    of editdecay.api's names): dead code goes, and helpers only the tests use live in tests/helpers."""
    files = [p for d in ("src", "benchmarks", "scripts") for p in (ROOT / d).rglob("*.py")]
    used: set[str] = set()
    defined: list[tuple[str, str]] = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        listed = {id(n) for node in tree.body if isinstance(node, ast.Assign)
                  and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
                  for n in ast.walk(node.value)}  # being listed in __all__ is not a use
        for node in ast.walk(tree):
            if id(node) in listed:
                continue
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                used.add(node.id)
            elif isinstance(node, ast.Attribute):
                used.add(node.attr)
            elif isinstance(node, ast.ImportFrom):
                used.update(a.name for a in node.names)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                used.add(node.value.rpartition(":")[2])  # api's lazy table: "module" or "module:name"
        if path.is_relative_to(SRC):
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    names = [node.name]
                elif isinstance(node, ast.Assign):
                    names = [t.id for t in node.targets if isinstance(t, ast.Name)]
                else:
                    names = [node.target.id] if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) else []
                defined += [(path.relative_to(SRC).as_posix(), n) for n in names if not n.startswith("__")]
    unused = [f"{where}: {name}" for where, name in defined if name not in used and name not in PUBLIC_UNUSED]
    assert unused == []
    for name in ("Timer", "CF_METRICS", "ZSRE_METRICS", "null_space_projection", "OPTIONAL_TABLES", "FORMS",
                 "DEFAULT_MODEL", "token_windows", "token_loss_sum", "subject_last_token"):
        assert name not in {n for _, n in defined}, name
