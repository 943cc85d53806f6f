"""The supported transformers range: pinned in pyproject.toml and checked when editdecay is imported."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata

import pytest
from helpers import ROOT

import editdecay


@pytest.mark.parametrize("version", ["4.57.1", "4.99.0", "5.0.0", "6.0.0", "garbage"])
def test_unsupported_transformers_is_refused_with_the_fix(version):
    with pytest.raises(ImportError) as info:
        editdecay._check_transformers(version)
    message = str(info.value)
    assert f"transformers {version} is installed" in message
    assert "pip install 'transformers>=5.25,<6'" in message


@pytest.mark.parametrize("version", ["5.25.0", "5.26.0.dev0", "5.99.1"])
def test_supported_transformers_passes(version):
    editdecay._check_transformers(version)


def test_installed_transformers_is_supported():
    editdecay._check_transformers(metadata.version("transformers"))


def test_pyproject_pin_matches_the_import_check():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if re.match(r"transformers\b", d)]
    lo = ".".join(map(str, editdecay.TRANSFORMERS_MIN))
    hi = ".".join(map(str, editdecay.TRANSFORMERS_BELOW))
    assert spec.replace(" ", "") == f"transformers>={lo},<{hi}"
