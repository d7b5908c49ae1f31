"""MkDocs hook: serve MathJax from a pip-installed copy instead of a CDN.

The `docs` extra installs `django-static-mathjax` (MathJax 3.2.2, Apache-2.0, static files
only; it needs no Django to be used this way). This hook adds the parts of it that a page
needs (the `tex-mml-chtml` component, its lazily loaded TeX extensions, fonts and menu)
to the site under `assets/mathjax/`, so math renders on a machine without internet access,
`mkdocs serve` included. The site never loads anything from a CDN.
"""

import logging
from pathlib import Path

from mkdocs.structure.files import File, Files


log = logging.getLogger("mkdocs.hooks.mathjax")

_COMPONENT = "tex-mml-chtml.js"
_DIRS = ("input", "output", "ui", "a11y", "adaptors")
_DEST = "assets/mathjax"


def on_files(files: Files, config) -> Files:
    try:
        import mathjax  # the module of the django-static-mathjax distribution
    except ImportError:
        log.warning(
            "MathJax is not installed, so math will not render: install the docs extra, "
            "pip install -e '.[docs]' (or run bash scripts/docs.sh)."
        )
        return files
    root = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    sources = [root / _COMPONENT]
    for d in _DIRS:
        sources += sorted(p for p in (root / d).rglob("*") if p.is_file())
    for src in sources:
        rel = src.relative_to(root).as_posix()
        files.append(File.generated(config, f"{_DEST}/{rel}", abs_src_path=str(src)))
    return files
