"""An analysis report: sections, figures, tables and metrics collected as Markdown, logged
at the end to the active run as analysis.md and as one self-contained analysis.html
(figures inline), which MLflow's artifact viewer shows whole. A value that is missing (NaN:
the spread of a single run, the final cost of a training that diverged) shows as —."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import pandas as pd

MISSING = "—"  # how a missing value (NaN) shows in the report


class Report:
    """Figures and numbers collected for analysis.md and analysis.html, logged together at
    the end. The HTML page carries its figures inline, so MLflow's artifact viewer shows
    the whole report; the PNGs are logged beside it too."""

    def __init__(self, folder: Path, title: str, subtitle: str = ""):
        """A report headed `title` (e.g. the analysed run's name), with `subtitle` (its id,
        …) under it in a paragraph of its own."""
        self.folder, self.title = folder, title
        self.lines = [f"# {title}", ""] + ([subtitle, ""] if subtitle else [])
        self.values: dict[str, float] = {}  # every metric reported, for the headline

    def section(self, title: str, text: str) -> None:
        self.lines += [f"## {title}", "", text, ""]

    def figure(self, fig, name: str, caption: str) -> None:
        fig.savefig(self.folder / name, dpi=110)
        plt.close(fig)
        self.lines += [f"![{caption}]({name})", ""]

    def table(self, table: pd.DataFrame, name: str) -> None:
        """A table in the report, and as CSV beside it."""
        table.to_csv(self.folder / name, index=False)
        shown = table.astype(object).where(table.notna(), None)  # NaN → None → MISSING
        self.lines += shown.to_markdown(
            index=False, floatfmt=".4f", missingval=MISSING
        ).splitlines() + [""]

    def metrics(self, values: dict) -> None:
        mlflow.log_metrics(values)
        self.values.update(values)
        self.lines += [
            f"- `{k}` = {v:.4g}" if math.isfinite(v) else f"- `{k}` = {MISSING}"
            for k, v in values.items()
        ] + [""]

    def log(self) -> None:
        (self.folder / "analysis.md").write_text("\n".join(self.lines))
        (self.folder / "analysis.html").write_text(self.html())
        mlflow.log_artifacts(str(self.folder), "report")

    def html(self) -> str:
        """The report as one self-contained page (figures as data: URLs)."""
        body: list[str] = []
        bullets: list[str] = []
        rows: list[str] = []
        for line in self.lines + [""]:
            if line.startswith("- "):
                bullets.append(f"<li>{_inline(line[2:])}</li>")
                continue
            if line.startswith("|"):  # a Markdown table row; its |---| rule is dropped
                if not line.startswith("|:") and not line.startswith("|-"):
                    cell = "th" if not rows else "td"
                    rows.append(
                        "<tr>"
                        + "".join(
                            f"<{cell}>{_inline(c.strip())}</{cell}>"
                            for c in line.strip("|").split("|")
                        )
                        + "</tr>"
                    )
                continue
            if bullets:
                body.append("<ul>" + "".join(bullets) + "</ul>")
                bullets = []
            if rows:
                body.append("<table border='1' cellpadding='4'>" + "".join(rows) + "</table>")
                rows = []
            if line.startswith("# ") or line.startswith("## "):
                level = 1 if line.startswith("# ") else 2
                body.append(f"<h{level}>{_inline(line[level + 1 :])}</h{level}>")
            elif line.startswith("!["):
                caption, name = line[2:].split("](")
                data = base64.b64encode((self.folder / name[:-1]).read_bytes()).decode()
                body.append(
                    f'<figure><img alt="{html.escape(caption)}" style="max-width:100%" '
                    f'src="data:image/png;base64,{data}"><figcaption>'
                    f"{html.escape(caption)}</figcaption></figure>"
                )
            elif line:
                body.append(f"<p>{_inline(line)}</p>")
        return (
            "<!doctype html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title></head>"
            "<body style='font-family:sans-serif;max-width:1100px;margin:auto'>"
            + "\n".join(body)
            + "</body></html>"
        )


def _inline(text: str) -> str:
    """Markdown `code` spans to <code>, the rest escaped."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
