"""``report.html``: the Markdown report as one self-contained page, its figures embedded.

A researcher opens it from MLflow's artifact view or mails it on: nothing beside it is needed
for the text and the figures (the CSV tables it links to stay files of the report folder).
Markdown is converted by Python-Markdown (its ``tables`` extension); each ``<img>`` whose
source is a file of the report folder becomes a ``data:`` URI.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

__all__ = ["report_html"]

_STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 72em; padding: 0 1.5em; color: #1d1d1f; }
h1, h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 13px; display: block;
        overflow-x: auto; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f5; }
tr:nth-child(even) td { background: #fafafa; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
code { background: #f3f3f5; padding: 0 .2em; }
"""

_MIME = {".png": "image/png", ".svg": "image/svg+xml", ".jpg": "image/jpeg"}


def report_html(markdown_text: str, folder: Path, title: str = "emerge: analysis report"
                ) -> str:
    """The page for ``markdown_text``, figures read from ``folder`` and embedded."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"])

    def embed(m: re.Match) -> str:
        src = html.unescape(m.group(1))
        path = folder / src
        mime = _MIME.get(path.suffix.lower())
        if mime is None or not path.is_file() or not path.resolve().is_relative_to(
                folder.resolve()):
            return m.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        return f'src="data:{mime};base64,{data}"'

    body = re.sub(r'src="([^"]+)"', embed, body)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")
