"""decision.md and report.html from one list of the report's sections: a section is added in `sections` only, and
both files show it. report.html is one self-contained file: every figure (images, the video) embedded as a data URI."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pandas as pd

from posesplat.modes import label as mode_label


@dataclass
class Section:
    """One part of the report below its head, written alike into decision.md and report.html (a section is added
    to `sections` only)."""

    title: str
    level: int = 2
    paragraphs: list[str] = field(default_factory=list)  # Markdown inline: **bold**, `code`
    table: Optional[pd.DataFrame] = None
    bullets: Optional[list[str]] = None  # a list, even empty, is shown as one
    figures: Optional[list[tuple[Path, str]]] = None  # (file in the report, caption)
    exploratory: bool = False  # greyed on the page: it decides nothing


def sections(ctable: pd.DataFrame, tables: dict[str, pd.DataFrame], multiplicity: str, notes: list[str],
             figures: list[tuple[Path, str]]) -> list[Section]:
    """The report's sections in order: the confirm table, the explore tables, notes, figures."""
    out = []
    if len(ctable):
        out.append(Section("Confirm stage (the decision)", table=ctable.drop(columns="key")))
    if tables:
        out.append(Section("Explore stage (exploratory)", paragraphs=[multiplicity], exploratory=True))
    out += [Section(title, 3, table=tbl, exploratory=True) for title, tbl in tables.items()]
    return out + [Section("Notes", bullets=notes), Section("Figures", figures=figures)]


def figure_markdown(path: Path, caption: str) -> list[str]:
    """A figure's lines in decision.md: its name and caption; a video also its still (`<name>.png` beside it)."""
    still = [f"  ![a frame of {path.name}]({path.with_suffix('.png').name})"] if path.suffix in VIDEO else []
    return [f"- `{path.name}`: {caption}", *still]


def decision_markdown(modes, head: list[str], parts: list[Section]) -> list[str]:
    """decision.md's lines: the title, the recommendation and design, then each section."""
    md = [f"# {report_title(modes)}", "", *head]
    for sec in parts:
        md += ["", f"{'#' * sec.level} {sec.title}"]
        md += [line for p in sec.paragraphs for line in ("", p)]
        md += ["", sec.table.to_markdown(index=False)] if sec.table is not None else []
        md += ["", *[f"- {b}" for b in sec.bullets]] if sec.bullets is not None else []
        md += ["", *[line for p, cap in sec.figures for line in figure_markdown(p, cap)]] if sec.figures is not None \
            else []
    return md


def _md_inline(text: str) -> str:
    """Escape text for HTML and turn Markdown's **bold** and `code` into tags."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def report_title(modes) -> str:
    """The report's title, from the compared pair: "2D vs 3D Gaussian splatting: decision"."""
    return f"{mode_label(modes[0])} vs {mode_label(modes[1])} Gaussian splatting: decision"


IMAGE = {".png": "image/png", ".gif": "image/gif"}  # figure suffix -> MIME type on the page
VIDEO = {".mp4": "video/mp4"}
MIME = {**IMAGE, **VIDEO}  # every figure the page embeds


def figure_html(path: Path, caption: str) -> str:
    """A figure embedded as a data URI (the page is one self-contained file): an image, or a video that loops."""
    data = f"data:{MIME[path.suffix]};base64,{base64.b64encode(path.read_bytes()).decode()}"
    shown = (f'<video controls loop muted playsinline src="{data}"></video>' if path.suffix in VIDEO
             else f'<img alt="{html.escape(path.stem)}" src="{data}">')
    return f"<figure>{shown}<figcaption>{html.escape(caption)}</figcaption></figure>"


def section_html(sec: Section) -> str:
    """One section as HTML: heading, paragraphs, table, bullets, figures."""
    grey = " class='explore'" if sec.exploratory else ""
    parts = [f"<h{sec.level}{grey}>{html.escape(sec.title)}</h{sec.level}>",
             *[f"<p{grey}>{_md_inline(p)}</p>" for p in sec.paragraphs]]
    if sec.table is not None:
        parts.append(sec.table.to_html(index=False, border=0))
    if sec.bullets is not None:
        parts.append("<ul>" + "".join(f"<li>{_md_inline(b)}</li>" for b in sec.bullets) + "</ul>")
    parts += [figure_html(p, cap) for p, cap in sec.figures or [] if p.suffix in MIME]
    return "".join(parts)


def html_page(modes, head: list[str], parts: list[Section]) -> str:
    """One self-contained page: banner, design, then each section, every figure embedded as a data URI."""
    paras = [h for h in head if h]
    return "".join([
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(report_title(modes))}"
        "</title><style>body{font-family:system-ui,sans-serif;max-width:1280px;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0;font-size:90%}td,th{border:1px solid #bbb;padding:3px 6px}"
        "th{background:#eee;text-align:left}img,video{max-width:100%}figure{margin:1.5em 0}.rec{font-size:120%;"
        "padding:.6em;background:#f4f4d0}.explore{color:#555}</style></head><body>",
        f"<h1>{html.escape(report_title(modes))}</h1>",
        f"<p class='rec'>{_md_inline(paras[0])}</p>", *[f"<p>{_md_inline(p)}</p>" for p in paras[1:]],
        *[section_html(sec) for sec in parts], "</body></html>",
    ])
