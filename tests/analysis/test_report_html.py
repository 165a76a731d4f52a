"""report.html and the figures it shows: the tutorial's four strategies x 2 seeds trained for real (tiny), read back
from a real SQLite MLflow store."""

from __future__ import annotations

import base64
import io
import warnings
from html.parser import HTMLParser

import pytest

from lrsweep import tracking
from lrsweep.analysis import figures, files, report
from tests.conftest import TUTORIAL_STRATEGIES as STRATEGIES
from tests.conftest import job_runs


@pytest.fixture(scope="module")
def tutorial_sweep(tutorial_sweep):
    """`+strategy=adam_constant,adam_linear,adagrad,adadelta` x 2 seeds: 8 jobs, 4 configurations, 3 optimizers
    (conftest's, shared)."""
    tmp_path, _ = tutorial_sweep
    client, experiment_id = tracking.connect(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "lrsweep")
    built = report.build(tracking.load_sweep(client, experiment_id, "multirun"))
    return tmp_path, client, experiment_id, built


class Page(HTMLParser):
    """What a browser would load and show of report.html: every src/href/style, the table's rows, the text."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[str] = []
        self.references: list[str] = []  # values of src, href, srcset, data, poster, action attributes
        self.images: list[str] = []
        self.rows: list[list[str]] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name in ("src", "href", "srcset", "data", "poster", "action"):
                self.references.append(value or "")
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def test_report_html_is_one_self_contained_page_attached_to_the_parent_run(tutorial_sweep, tmp_path):
    sweep_path, client, experiment_id, built = tutorial_sweep
    folder = sweep_path / "multirun" / "report"
    text = (folder / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    # Self-contained: no scripts, stylesheets or fonts fetched, every image inline.
    assert "http://" not in text and "https://" not in text
    assert not {"script", "link", "iframe", "object"} & set(page.tags)
    assert "url(" not in text and "@import" not in text
    assert page.references and all(r.startswith("data:image/png;base64,") for r in page.references)
    # Every PNG of the folder, byte for byte, once each; here lr, curves and seeds (no numeric grid: no heatmap).
    pngs = sorted(folder.glob("*.png"))
    assert [p.name for p in pngs] == ["curves.png", "lr.png", "seeds.png"]
    embedded = sorted(base64.b64decode(src.split(",", 1)[1]) for src in page.images)
    assert embedded == sorted(p.read_bytes() for p in pngs)
    # What ranked the sweep, then the table: a header and one row per configuration with its verdict.
    assert f"Sweep {built.sweep_id}" in page.text and built.verdicts()[0] in page.text
    header, *rows = page.rows[: len(built.configurations) + 1]  # then the folded table of the other columns
    assert header[:2] == ["rank", "strategy"] and header[-1] == "verdict"
    assert len(rows) == len(built.configurations) == 4
    for config, row in zip(built.configurations, rows, strict=True):
        assert row[1] == config.values["strategy"] and f"strategy={row[1]}" == config.label
        assert row[-1].startswith(built.comparisons[config.label].verdict)  # the best: "best (tied with k)" if so
    assert {row[1] for row in rows} == set(STRATEGIES)
    for sentence in built.verdicts()[1:]:
        assert sentence in page.text
    # Attached to the sweep's parent run with the rest of the report, the same file.
    parent = tracking.find_sweep_run(client, experiment_id, "multirun")
    attached = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/report.html" in attached and {f"report/{p.name}" for p in pngs} <= attached
    downloaded = client.download_artifacts(parent.info.run_id, "report/report.html", str(tmp_path))
    assert open(downloaded, encoding="utf-8").read() == text


def test_write_embeds_the_pngs_already_in_the_folder_and_write_html_those_added_after(tutorial_sweep, tmp_path):
    _, _, _, built = tutorial_sweep
    plt = figures.pyplot()
    out = tmp_path / "report"
    out.mkdir()
    figure, ax = plt.subplots()
    ax.plot([1e-5, 1e-3, 1e-1], [2.3, 1.0, 4.0])
    figure.savefig(out / "lr_range.png")  # as the range test writes it, before the report
    (out / "lr_range.txt").write_text("Suggested: peak LR <= 0.01 & more\n")
    paths = files.write(built, out)
    assert out / "report.html" in paths
    page = Page((out / "report.html").read_text())
    assert len(page.images) == len(list(out.glob("*.png"))) == 4
    captions = [t for t in page.text if t.endswith(".png")]
    assert captions == ["lr.png", "curves.png", "seeds.png", "lr_range.png"]  # the report's own first
    assert "Suggested: peak LR <= 0.01 & more" in page.text  # escaped in the page, read back unescaped
    figure.savefig(out / "extra.png")  # written after the report: picked up when the page is written again
    plt.close(figure)
    files.write_html(built, out)
    assert len(Page((out / "report.html").read_text()).images) == 5


def _excluded_text(client, runs, over_epochs: bool) -> str:
    """The share of parameters left out of the effective-LR quantiles in `runs`, read from MLflow directly."""
    if over_epochs:
        values = [m.value for r in runs for m in client.get_metric_history(r.info.run_id, figures.EXCLUDED)]
    else:
        values = [r.data.metrics[figures.EXCLUDED] for r in runs]
    low, high = f"{100 * min(values):.0f}", f"{100 * max(values):.0f}"
    return f"{low}%" if low == high else f"{low}-{high}%"


def _optimizer(run) -> str:
    """A run's optimizer as the job recorded it (where it is recorded has moved: look in each place)."""
    params, tags = run.data.params, run.data.tags
    return params.get("choice.optimizer") or tags.get("lrsweep.optimizer") or params["optimizer._target_"]


def test_lr_has_one_effective_lr_panel_per_optimizer_with_its_definition_and_excluded_fraction(tutorial_sweep):
    _, client, experiment_id, built = tutorial_sweep
    figure = figures.plot_lr(built)
    schedule, *panels = figure.axes
    titles = {ax.get_title().split(":")[0]: ax for ax in panels}
    assert sorted(titles) == ["Adadelta", "Adagrad", "Adam"]  # one per adaptive optimizer, none for the schedule
    assert "lr*sqrt(1-β2^t)/(1-β1^t)/(sqrt(v)+eps)" in titles["Adam"].get_title()
    assert "a step per unit of m" in titles["Adam"].get_title()
    assert "lr/sqrt(acc+eps)" in titles["Adagrad"].get_title()
    assert "lr*sqrt(E[dx²]+eps)/sqrt(E[g²]+eps)" in titles["Adadelta"].get_title()
    legend_labels = {name: {t.get_text() for t in ax.get_legend().get_texts()} for name, ax in titles.items()}
    assert legend_labels == {
        "Adam": {"strategy=adam_constant", "strategy=adam_linear"},
        "Adagrad": {"strategy=adagrad"},
        "Adadelta": {"strategy=adadelta"},
    }
    # Adam's value (~10, a step per unit of m) and Adagrad's (~1e-3) no longer share an axis.
    adam_median = [y for line in titles["Adam"].get_lines() for y in line.get_ydata()]
    adagrad_median = [y for line in titles["Adagrad"].get_lines() for y in line.get_ydata()]
    assert min(adam_median) > 100 * max(adagrad_median)
    # The share of parameters left out of the quantiles, stated per optimizer as MLflow has it.
    runs = job_runs(client, experiment_id, "multirun").values()
    for name, ax in titles.items():
        stated = ax.get_title().splitlines()[-1]
        mine = [r for r in runs if _optimizer(r).rsplit(".", 1)[-1].lower() == name.lower()]
        assert len(mine) == {"Adam": 4}.get(name, 2)
        expected = _excluded_text(client, mine, over_epochs="all epochs" in stated)
        assert stated.startswith(f"{expected} of parameters left out ("), stated
    assert titles["Adam"].get_title().endswith("no gradient yet, or m < 1e-30")
    # Adagrad and Adadelta run the same constant 0.001: both lines stay visible, the later thinner and on top.
    lines = {line.get_label(): line for line in schedule.get_lines()}
    ranked = [c.label for c in built.configurations if c.label in ("strategy=adagrad", "strategy=adadelta")]
    first, second = (lines[label] for label in ranked)  # drawn in rank order
    assert list(first.get_ydata()) == pytest.approx(list(second.get_ydata()))
    assert first.get_marker() != second.get_marker() and first.get_linestyle() != second.get_linestyle()
    assert second.get_zorder() > first.get_zorder()
    assert second.get_markersize() < first.get_markersize() and second.get_linewidth() < first.get_linewidth()


def test_curves_zoom_on_the_leading_configurations_and_keep_the_legend_inside(tutorial_sweep, monkeypatch):
    _, _, _, built = tutorial_sweep
    figure = figures.plot_curves(built)
    full, zoom = figure.axes[:4], figure.axes[4:]
    assert len(figure.axes) == 8 and all(ax.get_title().endswith(": zoom") for ax in zoom)
    leading, which = figures.leading_configurations(built, built.configurations)
    assert 2 <= len(leading) <= figures.ZOOM_LEADING and built.configurations[-1] not in leading
    assert which in figure.get_suptitle()
    worst = built.configurations[-1]
    for whole, ax, metric in zip(full, zoom, figures.CURVE_METRICS, strict=True):
        # The zoom spans the leading configurations' mean ± std curves and a 10% margin, within the whole panel.
        bounds = [m + k * s for c in leading for m, s in zip(*c.curve(metric)[1:], strict=True) for k in (-1, 1)]
        margin = 0.1 * (max(bounds) - min(bounds))
        (low, high), (whole_low, whole_high) = ax.get_ylim(), whole.get_ylim()
        assert (low, high) == pytest.approx(
            (max(min(bounds) - margin, whole_low), min(max(bounds) + margin, whole_high))
        )
        assert len(ax.get_lines()) == len(whole.get_lines()) == 4  # the same lines, zoomed
    # Ranked on val_accuracy, the worst configuration ends outside the zoom: it no longer sets the scale.
    (low, high), (whole_low, whole_high) = zoom[3].get_ylim(), full[3].get_ylim()
    assert not low <= worst.curve("val_accuracy")[1][-1] <= high
    assert high - low < (whole_high - whole_low) / 2
    # Many configurations: only the best LINES_SHOWN are drawn, the title says so, the legend fits the figure.
    monkeypatch.setattr(figures, "LINES_SHOWN", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "Tight layout not applied", "constrained_layout not applied"
        figure = figures.plot_curves(built)
        figure.savefig(io.BytesIO(), format="png")
    assert "(the best 2 of 4 configurations)" in figure.get_suptitle()
    assert all(len(ax.get_lines()) == 2 for ax in figure.axes)
    (legend,) = figure.legends
    assert [t.get_text() for t in legend.get_texts()] == [
        f"{c.label} (n={len(c.finished)})" for c in built.configurations[:2]
    ]
    box, page = legend.get_window_extent(), figure.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
    assert all(box.y1 <= ax.get_tightbbox().y0 + 1 for ax in figure.axes)  # below the panels, not over them
    lr_figure = figures.plot_lr(built)
    assert len(lr_figure.axes[0].get_lines()) == 2 and "(the best 2 of 4" in lr_figure.axes[0].get_title()


def test_optimizer_is_read_from_choice_then_tag_then_target():
    run = report.JobRun("a", "a", "FINISHED", {}, {"optimizer._target_": "keras.optimizers.RMSprop"}, {})
    assert figures.optimizer_name(run) == "RMSprop"
    run.tags["lrsweep.optimizer"] = "keras.optimizers.Adagrad"
    assert figures.optimizer_name(run) == "Adagrad"
    run.params["choice.optimizer"] = "adam"
    assert figures.optimizer_name(run) == "Adam"
    run.params["choice.optimizer"] = "adam_amsgrad"  # a config option named otherwise: the class says the family
    assert figures.optimizer_name(run) == "Adagrad"
    assert figures.optimizer_name(report.JobRun("b", "b", "FINISHED", {}, {"choice.optimizer": "lion"}, {})) == "lion"
    assert figures.optimizer_name(report.JobRun("b", "b", "FINISHED", {}, {}, {})) is None
    assert figures._percent_range(0.5, 0.504) == "50%"
    assert figures._percent_range(0.684, 0.811) == "68-81%"
