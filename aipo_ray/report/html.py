"""One self-contained HTML page: tables of per-iteration numbers and base64-embedded PNGs."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from typing import Any

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #666; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #f4f4f4; } td.l, th.l { text-align: left; }
.missing { color: #999; font-style: italic; padding: 1em; border: 1px dashed #ccc; }
figure { margin: 1.5em 0; } figcaption { color: #555; font-size: 0.9em; max-width: 60em; }
img { max-width: 100%; }
"""
NA = "not yet available"


@dataclass
class Section:
    """One plot: its title, what it shows (and its paper figure), and its PNG or None."""

    key: str
    title: str
    caption: str
    png: bytes | None = None


def fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def table(headers: list[str], rows: list[list[Any]], left: int = 1) -> str:
    """An HTML table; the first `left` columns are left-aligned labels."""
    def cells(tag, values):
        return "".join(f"<{tag}{' class=l' if k < left else ''}>{v}</{tag}>"
                       for k, v in enumerate(values))

    head = f"<tr>{cells('th', [html.escape(h) for h in headers])}</tr>"
    body = "".join(f"<tr>{cells('td', [fmt(v) for v in row])}</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


def figure(section: Section) -> str:
    title = f"<h3>{html.escape(section.title)}</h3>"
    caption = f"<figcaption>{html.escape(section.caption)}</figcaption>"
    if section.png is None:
        return f'{title}<div class="missing" id="{section.key}">{NA}</div>{caption}'
    data = base64.b64encode(section.png).decode("ascii")
    return (f'{title}<figure id="{section.key}"><img alt="{html.escape(section.title)}" '
            f'src="data:image/png;base64,{data}">{caption}</figure>')


def page(title: str, meta_lines: list[str], tables: list[tuple[str, str]],
         sections: list[Section]) -> str:
    """The whole document; `tables` are (heading, html) pairs shown before the figures."""
    meta = "".join(f"<div class=meta>{html.escape(m)}</div>" for m in meta_lines)
    blocks = "".join(f"<h2>{html.escape(h)}</h2>{body}" for h, body in tables)
    figs = "".join(figure(s) for s in sections)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>{meta}{blocks}"
            f"<h2>Plots</h2>{figs}</body></html>")
