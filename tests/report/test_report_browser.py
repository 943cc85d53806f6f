"""The HTML report in a real headless browser (Debian's chromium; `scripts/ensure_chromium.sh` installs it):
it renders (a screenshot that is not blank), the DOM shows the dataset string holding `<script>` as text, and no
script element comes from data."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers.store import XSS, analyze_store, build_store, make_artifacts, write_corpus

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")
                 if shutil.which(n)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH: run scripts/ensure_chromium.sh")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp / "profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=90)


@pytest.fixture(scope="module")
def report_html(tmp_path_factory, tiny_tok):
    from editdecay.report.api import write_report

    folder = tmp_path_factory.mktemp("browser")
    arts = make_artifacts(folder, tiny_tok)
    store = build_store(folder / "results.db", seeds=(0, 1), models=("smollm2-135m",),
                        ft_data=str(write_corpus(folder / "ft.jsonl")),
                        artifacts={("smollm2-135m", "memit", 0): arts})
    analyze_store(store)
    write_report(store, folder / "out")
    return folder / "out" / "report.html"


def test_report_renders_in_headless_chromium(report_html, tmp_path):
    import matplotlib.image as mpimg

    shot = tmp_path / "report.png"
    done = _chromium(tmp_path, "--window-size=1280,2400", f"--screenshot={shot}", report_html.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 20_000
    pixels = mpimg.imread(shot)
    assert pixels.shape[0] == 2400 and pixels.shape[1] == 1280
    assert float(pixels[..., :3].std()) > 0.05  # not a blank page
    assert "Uncaught" not in done.stderr  # no script error of any kind
    if os.environ.get("EDITDECAY_SCREENSHOT"):  # keep a copy for a human to look at
        shutil.copyfile(shot, os.environ["EDITDECAY_SCREENSHOT"])


def test_dom_shows_script_string_as_text_and_has_no_script_element(report_html, tmp_path):
    done = _chromium(tmp_path, "--dump-dom", report_html.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    assert "<h1>" in dom and "Findings" in dom
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom  # serialised text node
    assert re.search(r"<script\b", dom, flags=re.IGNORECASE) is None  # the parser created no script element
    assert XSS not in dom
    assert dom.count('src="data:image/png;base64,') == 5
    assert len(re.findall(r"<table>", dom)) == 10  # every table but findings (listed above them), categories too
