"""report.md escapes only what Markdown would read as markup: the rendered text equals the data, and the
plain file reads like the data (no `fine\\-tuning`, `demo\\-out/results\\.db`)."""

from __future__ import annotations

import html
import re

import pytest

from editdecay.report.render import esc_md

CLEAN = ["fine-tuning", "demo-out/results.db", "-0.12", "3.5e-4", "M_ed_ft", "mom2_update_weight", "p < 0.05",
         "a > b", "AT&T", "Subject_4 & co", "LoRA (r=32)", "Hello!", "x.y.z", "record #3", "50%", "{a}", "+1",
         "ES/PS/NS", "C:\\path"]
NASTY = ["<script>alert(1)</script>", "*bold* and **more**", "_under_ score_", "`code`", "[link](http://x.y)",
         "![img](a.png)", "a | b", "~~gone~~", "$x$", "&amp; &#35;", "\\*", "back\\", "Runs #", "##", "# title",
         "> quote", "- item", "+ item", "1. first", "2) second", "= = =", "---", "***", "___", "    code",
         "<http://example.com>", "trailing_", "_leading", "snake__case"] + CLEAN


def test_plain_text_stays_plain():
    for text in CLEAN:
        assert esc_md(text) == text, text
    assert esc_md("<script>alert(1)</script>") == r"\<script>alert(1)\</script>"
    assert esc_md("a | b") == r"a \| b" and esc_md("*x*") == r"\*x\*" and esc_md("_x_") == r"\_x\_"
    assert esc_md("line one\nline two") == "line one line two"
    # block markers matter only where the text starts a line or a list item
    assert esc_md("- item") == "- item" and esc_md("- item", line_start=True) == r"\- item"
    assert esc_md("1. first", line_start=True) == r"1\. first" and esc_md("# h", line_start=True) == r"\# h"


def _render(md: str) -> str:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(md)


def _text(rendered: str, tag: str) -> list[str]:
    """Inner text of each ``tag`` element, with no markup left inside it."""
    out = []
    for inner in re.findall(rf"<{tag}[^>]*>(.*?)</{tag}>", rendered, flags=re.S):
        assert "<" not in inner, f"markup inside <{tag}>: {inner!r}"
        out.append(html.unescape(inner))
    return out


@pytest.mark.parametrize("text", NASTY)
def test_rendered_markdown_shows_the_data_verbatim(text):
    pytest.importorskip("markdown_it")
    # as a report uses it: paragraph start, list item, inline after bold, heading, table cell
    assert _text(_render(esc_md(text, line_start=True) + "\n"), "p") == [text.strip()]
    assert _text(_render(f"- {esc_md(text, line_start=True)}\n"), "li") == [text.strip()]
    rendered = _render(f"- **k**: {esc_md(text)}\n")
    assert html.unescape(re.sub(r"<strong>k</strong>", "", re.sub(r"</?(ul|li)>|\n", "", rendered))) == ": " + text
    assert _text(_render(f"### {esc_md(text)}\n"), "h3") == [text.strip()]
    table = _render(f"| a | b |\n| --- | --- |\n| {esc_md(text)} | x |\n")
    assert _text(table, "td") == [text.strip(), "x"]
