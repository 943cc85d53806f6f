"""Project habits that CI checks: `make test` lints, and every package says what it is for and may import."""

from __future__ import annotations

import ast
import re

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
