"""MkDocs hook: the command-line reference, written from the parser at build time.

`docs/cli.md` holds the marker `<!-- cli-reference -->`; this hook replaces it with
`eqx_lstm_ac._cli.reference_markdown()`: every subcommand and option with its default, as
the installed `eqx-lstm-ac` parses them, so the page cannot drift from the program.
"""

MARKER = "<!-- cli-reference -->"


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER not in markdown:
        return markdown
    from eqx_lstm_ac._cli import reference_markdown

    return markdown.replace(MARKER, reference_markdown())
