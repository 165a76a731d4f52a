"""A sweep's report as files: summary.csv, summary.md, runs.csv, the figures as PNGs, and report.html with them all."""

from __future__ import annotations

import base64
import csv
from html import escape
from pathlib import Path

from lrsweep.analysis import figures as draw
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
    verdicts = "\n".join(f"- {line}" for line in report.verdicts())
    path.write_text(f"# Sweep {report.sweep_id}\n\n{report.table(markdown=True)}\n\n{verdicts}\n")
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
        ("heatmap", draw.plot_heatmap(report)),
        ("rungs", draw.plot_rungs(report)),
    )
    for name, figure in figures:
        if figure is not None:
            path = out_dir / f"{name}.png"
            figure.savefig(path, dpi=120)
            plt.close(figure)
            written.append(path)
    written.append(write_html(report, out_dir))
    return written


# report.html shows these first, in this order, then any other PNG in the folder.
FIGURE_CAPTIONS = {
    "lr.png": "The LR set by the schedule per epoch; beside it, per optimizer, the effective per-parameter step size "
    "it really applies (median, band p10-p90) and the share of parameters left out of those quantiles.",
    "curves.png": "Training and validation loss and accuracy per epoch (mean ± std over seeds); the second row zooms "
    "on the leading configurations.",
    "seeds.png": f"Each seed's final {RANK_METRIC}, the mean with its 95% confidence interval, coloured by verdict.",
    "heatmap.png": f"Mean final {RANK_METRIC} over the grid; hatched cells diverged; the red line is the largest LR at "
    "which every seed trains.",
    "rungs.png": f"Successive halving: each configuration's mean {RANK_METRIC} up to where it stopped (grey) or to "
    "the end (colour); dashed lines at the rungs.",
    "lr_range.png": "LR range test: smoothed training loss against the learning rate.",
}
_VERDICT_CLASS = {stats.BEST: "best", stats.TIED: "tied", stats.WORSE_UNCORRECTED: "uncorrected", stats.WORSE: "worse"}
_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:.85em;font-variant-numeric:tabular-nums}
th,td{border:1px solid #ccc;padding:.25em .5em;white-space:nowrap}th{background:#f0f0f0}
tr:nth-child(even) td{background:#fafafa}.scroll{overflow-x:auto}img{max-width:100%;height:auto}
td.best{color:#1a7f37;font-weight:bold}td.tied{color:#1f6feb}td.uncorrected{color:#b35900}td.worse{color:#c62828}
pre{background:#f6f6f6;padding:.6em;overflow-x:auto}figure{margin:1.5em 0}figcaption{color:#555}"""


def write_html(report: SweepReport, out_dir: Path) -> Path:
    """Writes report.html into `out_dir`: one self-contained page (inline CSS, every PNG in `out_dir` embedded as
    a data URI, no external reference) with what ranked the sweep, the table, the verdicts and the figures.

    It embeds the PNGs present when it runs: call it again after adding one (e.g. the range test's lr_range.png).
    """
    header, body = report.table_cells()
    verdict_column = header.index("verdict")
    lines = report.verdicts()
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
        f'<p class="ranked"><strong>{escape(lines[0])}</strong></p>',
        f"<p>{escape(counts)}.</p>",
        "<h2>Configurations, best first</h2>",
        '<div class="scroll"><table><thead><tr>' + "".join(f"<th>{escape(h)}</th>" for h in header),
        "</tr></thead><tbody>",
    ]
    for cells in body:
        row = []
        for i, value in enumerate(cells):
            text = f"{value:.4f}" if isinstance(value, float) else str(value)
            css = _VERDICT_CLASS.get(text) if i == verdict_column else None
            row.append(f'<td class="{css}">{escape(text)}</td>' if css else f"<td>{escape(text)}</td>")
        parts.append("<tr>" + "".join(row) + "</tr>")
    parts.append("</tbody></table></div>")
    if len(lines) > 1:
        parts.append("<h2>Verdicts</h2><ul>" + "".join(f"<li>{escape(line)}</li>" for line in lines[1:]) + "</ul>")
    range_text = out_dir / "lr_range.txt"
    if range_text.is_file():
        parts.append(f"<h2>LR range test</h2><pre>{escape(range_text.read_text().strip())}</pre>")
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
