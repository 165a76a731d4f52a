"""A sweep's report as files: summary.csv, summary.md, runs.csv, the figures as PNGs, and report.html with them all."""

from __future__ import annotations

import base64
import csv
from html import escape
from pathlib import Path

from lrsweep.analysis import figures as draw
from lrsweep.analysis import headline, heatmap, rungs
from lrsweep.analysis.report import FINAL_METRICS, RANK_METRIC, SEED_KEY, SweepReport, plural
from lrsweep.core import stats


def write(report: SweepReport, out_dir: Path) -> list[Path]:
    """Writes summary.csv, summary.md, runs.csv, the figures (PNG) and report.html (all of them on one page, with
    any other PNG already in `out_dir`) into `out_dir`; returns the paths."""
    plt = draw.pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    rows = report.rows()
    path = out_dir / "summary.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["rank"])
        writer.writeheader()
        writer.writerows(rows)
    written.append(path)
    path = out_dir / "summary.md"
    path.write_text(summary_md(report, range_suggestion(out_dir)))
    written.append(path)
    path = out_dir / "runs.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        metrics = (*FINAL_METRICS, *report.test_metrics)
        writer.writerow(["run", "run_id", "status", "diverged", "reused", *report.swept, SEED_KEY, *metrics])
        for run in report.runs:
            values = [run.overrides.get(k, "") for k in report.swept]
            writer.writerow(
                [run.name, run.run_id, run.status, run.diverged, run.reused, *values, run.params.get(SEED_KEY, ""),
                 *(run.final.get(m, "") for m in metrics)]
            )  # fmt: skip
    written.append(path)
    figures = (
        ("lr", draw.plot_lr(report)),
        ("curves", draw.plot_curves(report)),
        ("seeds", draw.plot_seeds(report)),
        ("heatmap", heatmap.plot_heatmap(report)),
        ("rungs", rungs.plot_rungs(report)),
    )
    for name, figure in figures:
        if figure is not None:
            path = out_dir / f"{name}.png"
            figure.savefig(path, dpi=120)
            plt.close(figure)
            written.append(path)
    written.append(write_html(report, out_dir))
    return written


def range_suggestion(out_dir: Path) -> str:
    """The range test's suggestion, when `lrsweep.analysis.range_test` wrote one into `out_dir` (lr_range.txt)."""
    path = out_dir / "lr_range.txt"
    return path.read_text().strip() if path.is_file() else ""


def summary_md(report: SweepReport, suggestion: str = "") -> str:
    """summary.md: the answer, then the table and the verdicts (a range test: its suggestion alone)."""
    answer = headline.answer(report, suggestion)
    if headline.range_test_only(report):
        return f"# Sweep {report.sweep_id}\n\n```\n{answer[0]}\n```\n"
    verdicts = "\n".join(f"- {line}" for line in report.verdicts())
    lines = "\n\n".join(f"**{line}**" for line in answer)
    return f"# Sweep {report.sweep_id}\n\n{lines}\n\n{report.table(markdown=True)}\n\n{verdicts}\n"


# report.html shows these first, in this order, then any other PNG in the folder.
FIGURE_CAPTIONS = {
    "lr.png": "The LR set by the schedule per epoch; beside it, per optimizer, the effective per-parameter step size "
    "it really applies (median, band p10-p90) and the share of parameters left out of those quantiles. Each "
    "configuration keeps one colour and marker in every figure.",
    "curves.png": "Training and validation loss and accuracy per epoch (mean ± std over seeds), validation panels "
    "naming their set (test set or held-out); the second row zooms on the leading configurations. The ranking uses "
    "the last epoch only: the title says so, and where the two leading configurations were in the other order.",
    "seeds.png": f"Each seed's final {RANK_METRIC} (small markers) and the mean with its 95% confidence interval "
    "(large), in the configuration's colour; its verdict is written under its name and shown by the markers' fill: "
    "filled best or tied, half-filled worse before correction, hollow worse.",
    "heatmap.png": f"Mean final {RANK_METRIC} over the grid; hatched cells diverged. The red line is the largest "
    f"target LR at which every seed finished, none diverged and each reached final {RANK_METRIC} halfway from chance "
    "(0.10) to the best cell's mean (the bar is stated on the figure).",
    "rungs.png": f"Successive halving: each configuration's mean {RANK_METRIC} in its own colour, to the end (solid) "
    "or, dotted and ending in a cross, to where it stopped; dashed lines at the rungs.",
    "lr_range.png": "LR range test: smoothed training loss against the learning rate.",
}
_VERDICT_CLASS = {stats.BEST: "best", stats.TIED: "tied", stats.WORSE_UNCORRECTED: "uncorrected", stats.WORSE: "worse"}
_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:.85em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ccc;padding:.25em .5em;white-space:nowrap}th{background:#f0f0f0}
tr:nth-child(even) td{background:#fafafa}.scroll{overflow-x:auto}img{max-width:100%;height:auto}
td.best{color:#1a7f37;font-weight:bold}td.tied{color:#1f6feb}td.uncorrected{color:#b35900}td.worse{color:#c62828}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto}figure{margin:1.5em 0}figcaption{color:#555}
p.answer{font-size:1.15em;line-height:1.4}details{margin:.6em 0}summary{cursor:pointer;color:#555}"""


def write_html(report: SweepReport, out_dir: Path) -> Path:
    """Writes report.html into `out_dir`: one self-contained page (inline CSS, every PNG in `out_dir` embedded as
    a data URI, no external reference): the answer first, what ranked the sweep, the table (its secondary columns
    folded away, so that it fits a laptop's window), the verdicts and the figures.

    It embeds the PNGs present when it runs: call it again after adding one (e.g. the range test's lr_range.png).
    """
    suggestion = range_suggestion(out_dir)
    range_only = headline.range_test_only(report)
    answer = headline.answer(report, suggestion)
    failed = sum(r.status != "FINISHED" for r in report.runs)
    counts = f"{plural(len(report.runs), 'run')} in {plural(len(report.configurations), 'configuration')}"
    counts += f"; {failed} not finished; {sum(r.diverged for r in report.runs)} diverged"
    reused = sum(r.reused for r in report.runs)
    counts += f"; {reused} reused from earlier sweeps" if reused else ""
    title = f"Sweep {report.sweep_id}" if report.sweep_id else "Sweep report"
    parts = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
    ]
    if range_only:
        parts.append(f'<pre class="answer">{escape(answer[0])}</pre>')
    else:
        parts += [f'<p class="answer"><strong>{escape(line)}</strong></p>' for line in answer]
    parts.append(f"<p>{escape(counts)}.</p>")
    if not range_only:
        parts += _ranking_html(report)
        if suggestion:
            parts.append(f"<h2>LR range test</h2><pre>{escape(suggestion)}</pre>")
    order = list(FIGURE_CAPTIONS)
    pngs = sorted(out_dir.glob("*.png"), key=lambda p: (order.index(p.name) if p.name in order else len(order), p.name))
    if pngs:
        parts.append("<h2>Figures</h2>")
    for png in pngs:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        caption = f"<strong>{escape(png.name)}</strong>: {escape(FIGURE_CAPTIONS.get(png.name, ''))}"
        parts.append(
            f'<figure><img src="data:image/png;base64,{data}" alt="{escape(png.name)}">'
            f"<figcaption>{caption}</figcaption></figure>"
        )
    others = sorted(p.name for p in out_dir.iterdir() if p.is_file() and p.suffix != ".png" and p.name != "report.html")
    if others:
        parts.append(f"<p>Also in this folder: {escape(', '.join(others))}.</p>")
    parts.append("</body></html>\n")
    path = out_dir / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _ranking_html(report: SweepReport) -> list[str]:
    """What ranked the sweep, the table up to the verdict (the rest of its columns in a folded table below, each
    row named as above) and the verdicts."""
    header, body = report.table_cells()
    split = header.index("verdict") + 1
    named = 1 + max(1, len(report.swept))  # rank and the configuration's values: repeated in the folded table
    lines = report.verdicts()
    parts = [
        f'<p class="ranked">{escape(lines[0])}</p>',
        "<h2>Configurations, best first</h2>",
        _table(header[:split], [cells[:split] for cells in body], split - 1),
        f"<details><summary>More columns: {escape(', '.join(header[split:]))}</summary>",
        _table(header[:named] + header[split:], [cells[:named] + cells[split:] for cells in body]),
        "</details>",
    ]
    if len(lines) > 1:
        parts.append("<h2>Verdicts</h2><ul>" + "".join(f"<li>{escape(line)}</li>" for line in lines[1:]) + "</ul>")
    return parts


def _table(header: list[str], body: list[list[object]], verdict_column: int | None = None) -> str:
    rows = ['<div class="scroll"><table><thead><tr>' + "".join(f"<th>{escape(h)}</th>" for h in header)]
    rows.append("</tr></thead><tbody>")
    for cells in body:
        row = []
        for i, value in enumerate(cells):
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            css = _verdict_class(text) if i == verdict_column else None
            row.append(f'<td class="{css}">{escape(text)}</td>' if css else f"<td>{escape(text)}</td>")
        rows.append("<tr>" + "".join(row) + "</tr>")
    rows.append("</tbody></table></div>")
    return "".join(rows)


def _verdict_class(text: str) -> str | None:
    """The verdict cell's style: a best with others tied with it looks as they do (a lead, not a win)."""
    if text.startswith(f"{stats.BEST} (tied"):
        return "tied"
    return _VERDICT_CLASS.get(text)
