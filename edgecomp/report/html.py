"""report.html: the Markdown report as one self-contained page. Its charts are the same PNGs report.md
links, embedded as data: URIs; the page loads nothing (its Content-Security-Policy forbids every fetch
but data: images), so it opens offline, from a mail attachment or a CI artifact, exactly as written."""

from __future__ import annotations

import base64
import html

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
STYLE = """
body { font: 14px/1.5 -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2328; margin: 0 auto;
       max-width: 1180px; padding: 24px 32px 64px; }
h1 { font-size: 1.7em; border-bottom: 1px solid #d0d7de; padding-bottom: .3em; }
h2 { font-size: 1.3em; border-bottom: 1px solid #d0d7de; padding-bottom: .25em; margin-top: 1.8em; }
table { border-collapse: collapse; display: block; overflow-x: auto; margin: 12px 0; font-size: 12.5px; }
th, td { border: 1px solid #d0d7de; padding: 4px 9px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; }
tr:nth-child(2n) td { background: #fbfbfc; }
code { background: #eff1f3; border-radius: 4px; padding: .1em .35em; font-size: 90%; }
pre { background: #f6f8fa; padding: 12px; overflow-x: auto; font-size: 12px; }
pre code { background: none; padding: 0; }
img { max-width: 100%; height: auto; display: block; margin: 10px 0; border: 1px solid #eaecef; }
details summary { cursor: pointer; color: #57606a; }
"""


def render_html(markdown_text: str, images: dict[str, bytes], title: str) -> str:
    """``images``: the relative PNG paths report.md links -> their bytes. A link to anything else is a bug
    of the report, not something to fetch: it raises."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": True}).enable("table")

    def image(self, tokens, idx, options, env):
        tok = tokens[idx]
        src = tok.attrGet("src")
        if src not in images:
            raise ValueError(f"report.md links {src!r}, which the report did not draw")
        data = base64.b64encode(images[src]).decode("ascii")
        alt = html.escape(tok.content or "", quote=True)
        return f'<img src="data:image/png;base64,{data}" alt="{alt}" data-chart="{html.escape(src, quote=True)}">'

    md.add_render_rule("image", image)
    body = md.render(markdown_text)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n")
