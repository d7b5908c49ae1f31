"""Every ```python block on the home page and in the guide runs as written.

The blocks of one page run in order in one namespace (a fresh one per page), in a temporary
directory, under the strict JAX settings of `conftest.py`. Blocks in other languages are not
run; a Python block preceded by `<!-- docs-test: skip (reason) -->` is skipped, and the
reason is required.
"""

import re
import textwrap
from pathlib import Path

import pytest


DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = [DOCS / "index.md", *sorted((DOCS / "guide").glob("*.md"))]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<ticks>`{3,})(?P<info>[^\n`]*)$")
_SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]*\S[^)]*)\)\s*-->")


def python_blocks(text: str) -> list[tuple[int, str]]:
    """The ```python blocks of a Markdown page, dedented, with their first line number
    (1-based), less those marked to be skipped."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, ticks, info = m["indent"], m["ticks"], m["info"].strip()
        start = i + 1
        end = start
        while end < len(lines) and lines[end].rstrip() != indent + ticks:
            end += 1
        if end == len(lines):
            raise ValueError(f"unclosed code fence at line {i + 1}")
        if info.split(" ")[0] == "python":
            previous = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
            if "docs-test" in previous and _SKIP.search(previous) is None:
                raise ValueError(
                    f"line {i}: a skip marker must be `<!-- docs-test: skip (reason) -->`"
                )
            if _SKIP.search(previous) is None:
                code = textwrap.dedent("\n".join(lines[start:end]))
                blocks.append((start + 1, code))
        i = end + 1
    return blocks


def test_extractor():
    page = textwrap.dedent(
        """\
        ```python
        a = 1
        ```
        ```bash
        echo no
        ```
        !!! example
            ```python
            b = a + 1
            ```
        <!-- docs-test: skip (needs a GPU) -->
        ```python
        c = 3
        ```
        """
    )
    assert python_blocks(page) == [(2, "a = 1"), (9, "b = a + 1")]
    with pytest.raises(ValueError, match="skip marker"):
        python_blocks("<!-- docs-test: skip -->\n```python\nx = 1\n```\n")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_page_runs(page: Path, tmp_path, monkeypatch):
    blocks = python_blocks(page.read_text())
    assert blocks, f"{page} has no python code block"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    for line, code in blocks:
        compiled = compile(code, f"{page.relative_to(DOCS.parent)}:{line}", "exec")
        exec(compiled, namespace)
