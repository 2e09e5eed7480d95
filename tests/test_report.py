"""The report: every section, valid PNG figures, a self-contained HTML page that parses and
renders in a real browser, tables whose numbers are the analysis DataFrames', identical
files on a rerun, and a clear account of failed and missing runs.

Two studies: a synthetic one written into a real store with known numbers (three models, four
sizes, five seeds, a failed and a pending run, measured costs, tuning tables), and one real
`python -m study run` of a small timm model (once per module)."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis import analyse, load_study
from analysis.stats import equivalent
from reports import write_report
from reports.format import count, display_names, named, pct, pvalue
from study.cli import main
from tests.conftest import FAST_MODEL, ROOT
from tests.synthetic import REALISTIC_COSTS, make_study

SECTION_IDS = ["answer", "learning-curves", "comparison", "costs", "tuning", "runs", "warnings", "methods"]
MD_HEADINGS = [
    "## 1. The answer",
    "## 2. Learning curves",
    "## 3. Comparison per size and significance",
    "## 4. Costs",
    "## 5. Tuning",
    "## 6. Per-run detail",
    "## 7. Warnings",
    "## Methods",
]
HALF_UNIT = 0.0005 + 1e-9  # a number printed to one decimal of a percent is within this of the DataFrame value
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


class PageParser(HTMLParser):
    """Checks that tags nest and close properly, and collects images, ids and tables."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.errors, self.images, self.ids, self.tags = [], [], [], [], set()
        self.tables: dict[str, list[list[str]]] = {}
        self._table, self._row, self._cell = None, None, None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.add(tag)
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs)
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "table":
            self._table = self.tables.setdefault(attrs.get("id", f"table{len(self.tables)}"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
            self._table.append(self._row)
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
            return
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse_page(path: Path) -> PageParser:
    parser = PageParser()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def md_tables(text: str) -> list[list[list[str]]]:
    """GitHub-flavoured pipe tables of a Markdown text, as rows of cells (header first)."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if current is None:
                current = []
                tables.append(current)
            current.append(cells)
        else:
            current = None
    return tables


def first_number(text: str) -> float:
    return float(re.search(r"[-+]?[\d,]*\.?\d+", text).group().replace(",", ""))


def tuning_tables() -> SimpleNamespace:
    """Tuning tables with the columns of analysis.tuning.TuningTables (issue 3's interface)."""
    trials, best, importances = [], [], []
    for model, base in (("mobilenetv2_100", 0.70), ("resnet18", 0.66)):
        values = base + np.array([0.0, 0.05, 0.02, 0.08, 0.01, 0.09])
        for t, v in enumerate(values):
            trials.append(
                {
                    "model": model,
                    "size_kind": "fraction",
                    "size_value": 0.5,
                    "optuna_study": f"synthetic|tune|{model}|fraction=0.5",
                    "trial": t,
                    "state": "PRUNED" if t in (2, 4) else "COMPLETE",
                    "value": v,
                    "epochs_run": 3,
                    "param_lr": 10 ** (-4 + 0.3 * t),
                    "param_augment": ["none", "standard", "strong"][t % 3],
                }
            )
        best.append(
            {
                "model": model,
                "size_kind": "fraction",
                "size_value": 0.5,
                "optuna_study": f"synthetic|tune|{model}|fraction=0.5",
                "best_trial": 5,
                "best_value": values[5],
                "n_trials": 6,
                "n_complete": 4,
                "n_pruned": 2,
                "n_failed": 0,
                "param_augment": "strong",
                "param_lr": 10 ** (-4 + 1.5),
            }
        )
        importances += [
            {"model": model, "size_kind": "fraction", "size_value": 0.5, "param": "lr", "importance": 0.8},
            {"model": model, "size_kind": "fraction", "size_value": 0.5, "param": "augment", "importance": 0.2},
        ]
    best_frame = pd.DataFrame(best)
    best_frame["best_trial"] = best_frame["best_trial"].astype("Int64")
    return SimpleNamespace(trials=pd.DataFrame(trials), best=best_frame, importances=pd.DataFrame(importances))


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A written report of the synthetic study and the analysis it shows."""
    out = tmp_path_factory.mktemp("synthetic")
    made = make_study(
        out / "study.db",
        seeds=5,
        failed=(("resnet18", 0.1, 4),),
        pending=(("mobilevit_xxs", 1.0, 3),),
        costs=REALISTIC_COSTS,
    )
    data = load_study(made.url)
    analysis = analyse(data, n_boot_curves=60, n_boot_stats=400)
    folder = write_report(data, out, tuning=tuning_tables(), analysis=analysis)
    return SimpleNamespace(
        folder=folder,
        analysis=analysis,
        data=data,
        page=parse_page(folder / "index.html"),
        md=(folder / "report.md").read_text(encoding="utf-8"),
    )


def test_every_section_is_present_in_order(synthetic):
    ids = [i for i in synthetic.page.ids if i in SECTION_IDS]
    assert ids == SECTION_IDS
    positions = [synthetic.md.index(h + "\n") for h in MD_HEADINGS]
    assert positions == sorted(positions)
    html = (synthetic.folder / "index.html").read_text(encoding="utf-8")
    for table in (
        "answer-table",
        "fits-table",
        "needed-table",
        "scores-table",
        "per-size-table",
        "pairwise-table",
        "posthoc-table",
        "model-costs-table",
        "training-costs-table",
        "time-to-target-table",
        "tuning-best-table",
        "tuning-importances-table",
        "warnings-table",
        "missing-table",
        "sizes-table",
        "train-config-table",
        "environment-table",
        "main-table",
        "convergence-table",
        "steps-table",
    ):
        assert table in synthetic.page.tables, table
    assert html.count('<summary><span class="swatch"') == 3  # one collapsible per model
    assert "highest data-efficiency score is" in html and "To reach 90% of the best full-data accuracy" in html
    # The verdict comes first: headline, at most three bullets, one caveat, then the main table.
    verdict = html[html.index('id="verdict"') : html.index('id="main-table"')]
    assert verdict.count("<li>") <= 3 and verdict.count('class="caveat"') <= 1
    assert html.index('id="verdict"') < html.index('id="main-table"') < html.index('id="answer-details"')


def test_every_figure_is_a_valid_png_and_the_markdown_links_them(synthetic):
    figures = sorted(p.name for p in (synthetic.folder / "figures").glob("*.png"))
    expected = {
        "learning_curves.png",
        "data_needed.png",
        "average_ranks.png",
        "accuracy_vs_cost.png",
        "tuning_history.png",
        "convergence.png",
    }
    expected |= {
        f"{kind}_{m}.png"
        for kind in ("training", "confusion")
        for m in ("mobilenetv2_100", "mobilevit_xxs", "resnet18")
    }
    assert set(figures) == expected
    for name in figures:  # every figure also as PDF and SVG, for a paper
        pdf, svg = (
            (synthetic.folder / "figures" / name).with_suffix(".pdf"),
            (synthetic.folder / "figures" / name).with_suffix(".svg"),
        )
        assert pdf.read_bytes().startswith(b"%PDF-") and b"</svg>" in svg.read_bytes(), name
    for name in figures:
        with Image.open(synthetic.folder / "figures" / name) as img:
            img.verify()
            assert img.format == "PNG"
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", synthetic.md)
    assert sorted(Path(p).name for p in linked) == figures
    assert all(p.startswith("figures/") and (synthetic.folder / p).is_file() for p in linked)


def test_html_is_one_self_contained_file_that_parses(synthetic):
    page = synthetic.page
    assert page.errors == [] and page.stack == []
    assert len(page.images) == len(list((synthetic.folder / "figures").glob("*.png")))
    for img in page.images:
        src = img["src"]
        assert src.startswith("data:image/png;base64,"), src[:60]
        Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1]))).verify()
        assert img.get("alt")
    html = (synthetic.folder / "index.html").read_text(encoding="utf-8")
    assert not ({"script", "link", "iframe", "object"} & page.tags)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html) and "@import" not in html and "url(" not in html


def test_text_is_escaped(tmp_path):
    made = make_study(
        tmp_path / "study.db",
        curves={"<b>evil</b>": (0.9, 2.0, 0.5), "plain": (0.85, 2.0, 0.5)},
        fractions=(0.5, 1.0),
        seeds=2,
    )
    data = load_study(made.url)
    folder = write_report(data, tmp_path, analysis=analyse(data, n_boot_curves=10, n_boot_stats=100))
    html = (folder / "index.html").read_text(encoding="utf-8")
    assert "<b>evil</b>" not in html and "&lt;b&gt;evil&lt;/b&gt;" in html
    assert parse_page(folder / "index.html").errors == []
    md = (folder / "report.md").read_text(encoding="utf-8")
    assert "<b>" not in md and "&lt;b>evil&lt;/b>" in md  # no raw HTML reaches GitHub's renderer
    assert "&#39;" not in md and "Holm's correction" in md  # Markdown is not HTML-escaped


def _html_table(synthetic, table_id):
    rows = synthetic.page.tables[table_id]
    return rows[0], rows[1:]


def test_per_size_and_pairwise_tables_match_the_analysis(synthetic):
    a = synthetic.analysis
    ids = _ids(synthetic)
    header, rows = _html_table(synthetic, "per-size-table")
    summary = a.summary.set_index(["model", "n_train"])
    assert len(rows) == len(summary)
    for n_text, _, model, mean_std, seeds, ci in rows:
        s = summary.loc[(ids[model], int(first_number(n_text)))]
        mean_text, std_text = mean_std.split(" ± ")
        assert (
            abs(first_number(mean_text) / 100 - s["mean"]) <= HALF_UNIT
            and abs(first_number(std_text) / 100 - s["std"]) <= HALF_UNIT
        )
        assert int(seeds) == s["n_seeds"] and ci == f"[{pct(s['ci_low'])}, {pct(s['ci_high'])}]"
    header, rows = _html_table(synthetic, "pairwise-table")
    pw = a.comparisons.pairwise
    assert len(rows) == len(pw)
    col = {name: i for i, name in enumerate(header)}
    for row in rows:
        n, better, other = int(first_number(row[0])), ids[row[1]], ids[row[2]]
        same = pw[(pw["n_train"] == n) & (pw["model_a"] == better) & (pw["model_b"] == other)]
        flipped = pw[(pw["n_train"] == n) & (pw["model_a"] == other) & (pw["model_b"] == better)]
        r = (same if len(same) else flipped).iloc[0]
        diff = r["diff"] if len(same) else -r["diff"]
        assert diff >= 0  # the better model comes first: differences read positive
        assert abs(float(row[col["A − B (pp)"]]) / 100 - diff) <= HALF_UNIT
        assert row[col["t-test p, Holm"]] == pvalue(r["p_t_holm"])
        lo, hi = (r["ci_low"], r["ci_high"]) if len(same) else (-r["ci_high"], -r["ci_low"])
        assert row[col["95% CI (pp)"]] == f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"  # turned with its pair
        tie = equivalent(r["ci_low"], r["ci_high"])  # within the equivalence margin: only then a tie
        assert row[col["Significant"]] == ("yes" if r["significant"] else "no (tie)" if tie else "no")


def _ids(synthetic) -> dict[str, str]:
    """Display name -> timm id, as the report names the synthetic models."""
    return {v: k for k, v in display_names(synthetic.data.config, synthetic.data.runs["model"].unique()).items()}


def test_named_writes_whole_ids_as_display_names_and_leaves_the_rest():
    names = {"resnet18": "ResNet-18", "resnet18d": "ResNet-18-D", "custom_net": "custom_net"}
    text = "resnet18 overtakes resnet18d; see confusion_resnet18.png and model 'resnet18'."
    assert named(text, names) == "ResNet-18 overtakes ResNet-18-D; see confusion_resnet18.png and model 'ResNet-18'."
    assert named(None, names) is None and named("custom_net", names) == "custom_net"


def test_score_differences_read_better_first_under_display_names(synthetic):
    sd = synthetic.analysis.score_differences.dropna(subset=["diff"])
    ids = _ids(synthetic)
    header, rows = _html_table(synthetic, "score-differences-table")
    assert header[2] == "score difference (A − B, A the higher)" and len(rows) == len(sd) > 0
    for row in rows:
        a, b = ids[row[0]], ids[row[1]]  # display names: a timm id would raise here
        r = sd[sd["model_a"].isin([a, b]) & sd["model_b"].isin([a, b])].iloc[0]
        diff, lo, hi = (
            (r["diff"], r["ci_low"], r["ci_high"]) if r["model_a"] == a else (-r["diff"], -r["ci_high"], -r["ci_low"])
        )
        assert diff >= 0 and row[2] == f"{diff:+.3f}" and row[3] == f"[{lo:+.3f}, {hi:+.3f}]"


def test_sentences_written_by_the_analysis_name_models_by_their_display_names(synthetic):
    a = synthetic.analysis
    written = [s for s in [*a.crossovers["sentence"], *a.ratios["sentence"]] if isinstance(s, str) and s]
    assert any(m in s for s in written for m in ("mobilenetv2_100", "resnet18"))  # the analysis writes ids
    html = (synthetic.folder / "index.html").read_text(encoding="utf-8")
    for block in ("crossovers", "ratios"):
        start = html.index(f'id="{block}"')
        shown = html[start : html.index("</ul>", start)]
        assert "<li>" in shown and not any(m in shown for m in ("mobilenetv2_100", "resnet18", "mobilevit_xxs"))
    assert "- Crossover: " in synthetic.md and ")- Crossover" not in synthetic.md  # one bullet per line


def test_answer_needed_and_cost_tables_match_the_analysis(synthetic):
    a = synthetic.analysis
    ids = _ids(synthetic)
    header, rows = _html_table(synthetic, "answer-table")
    assert [ids[r[0]] for r in rows] == a.answer["model"].tolist()
    needed = a.needed.set_index(["model", "target"])
    for row, (_, ans) in zip(rows, a.answer.iterrows()):
        assert row[1].startswith(pct(ans["acc_smallest"])) and row[2].startswith(pct(ans["acc_largest"]))
        for j, target in enumerate(a.targets["target"]):
            n = needed.loc[(ans["model"], target)]
            assert row[3 + j].startswith(count(n["n_star"])), (row[3 + j], n["n_star"])
            assert f"[{count(n['ci_low'])}, {count(n['ci_high'])}]" in row[3 + j]
        assert abs(first_number(row[3 + len(a.targets)]) - ans["score"]) <= HALF_UNIT
    header, rows = _html_table(synthetic, "model-costs-table")
    assert header[5] == "Latency, 1 thread, p50 / p95 (ms)" and header[6] == "Latency, 2 threads, p50 / p95 (ms)"
    costs = a.model_costs.set_index("model")
    for row in rows:
        c = costs.loc[ids[row[0]]]
        if c["measured"]:
            assert row[5] == f"{c['latency_p50_ms_1t']:.2f} / {c['latency_p95_ms_1t']:.2f}"
            assert row[6] == f"{c['latency_p50_ms_all']:.2f} / {c['latency_p95_ms_all']:.2f}"
        else:
            assert row[5] == "— / —"
    header, rows = _html_table(synthetic, "needed-table")
    assert len(rows) == len(a.needed)


def test_markdown_tables_are_well_formed_and_match(synthetic):
    tables = md_tables(synthetic.md)
    assert len(tables) >= 12
    for table in tables:
        assert len(table) >= 2 and set(table[1][0]) <= set("-: ")  # header, then the delimiter row
        assert all(len(row) == len(table[0]) for row in table), table[0]
    per_size = next(t for t in tables if t[0][:4] == ["training images", "fraction", "model", "mean ± std"])
    summary = synthetic.analysis.summary.set_index(["model", "n_train"])
    ids = _ids(synthetic)
    for row in per_size[2:]:
        s = summary.loc[(ids[row[2]], int(first_number(row[0])))]
        assert row[3] == f"{pct(s['mean'])} ± {pct(s['std'])}"


def test_failed_and_missing_runs_are_said(synthetic):
    page = synthetic.page
    assert "alert" in page.ids
    header, rows = _html_table(synthetic, "warnings-table")
    by_check = {r[1]: r for r in rows}
    assert (
        by_check["diverged_run"][0] == "error"
        and "ResNet-18 with 200 images, seed 4 failed: DivergedError" in by_check["diverged_run"][2]
    )
    assert (
        "MobileViT-XXS with 2,000 images: 1 planned run(s) have no result yet (seeds 3; status pending)"
        == by_check["missing_runs"][2]
    )
    header, rows = _html_table(synthetic, "missing-table")
    assert ["MobileViT-XXS", "2,000", "pending", "3"] in rows and ["ResNet-18", "200", "failed", "4"] in rows
    assert "58 of 60 planned runs finished (1 failed, 1 not run yet)" in synthetic.md
    assert "> [!WARNING]" in synthetic.md


def test_a_study_with_nothing_finished_still_reports_what_is_missing(tmp_path):
    cells = tuple((m, f, s) for m in ("a", "b") for f in (0.5, 1.0) for s in range(2))
    made = make_study(
        tmp_path / "study.db",
        curves={"a": (0.9, 2.0, 0.5), "b": (0.8, 2.0, 0.5)},
        fractions=(0.5, 1.0),
        seeds=2,
        pending=cells[:5],
        failed=cells[5:],
    )
    folder = write_report(load_study(made.url), tmp_path)
    page = parse_page(folder / "index.html")
    assert page.errors == [] and [i for i in page.ids if i in SECTION_IDS] == SECTION_IDS
    assert page.images == [] and not list((folder / "figures").glob("*.png"))
    md = (folder / "report.md").read_text(encoding="utf-8")
    assert "0 of 8 planned runs finished (3 failed, 5 not run yet)" in md and "No run has finished yet" in md
    assert len(page.tables["missing-table"]) == 1 + 5  # header, then one row per (model, size, status)
    assert sum(r[0] == "error" for r in page.tables["warnings-table"][1:]) == 3


def test_costs_and_tuning_sections(synthetic):
    html = (synthetic.folder / "index.html").read_text(encoding="utf-8")
    assert "Costs were not measured for: MobileViT-XXS." in html
    header, rows = _html_table(synthetic, "tuning-best-table")
    assert header[-2:] == ["augment", "lr"]
    assert rows[0][:3] == ["MobileNetV2", "fraction = 0.5", pct(0.79)] and rows[0][-2] == "strong"
    header, rows = _html_table(synthetic, "tuning-importances-table")
    assert header[2:] == ["augment", "lr"] and rows[0][2:] == ["0.2", "0.8"]


def test_every_table_is_written_as_csv(synthetic):
    a = synthetic.analysis
    for name, table in a.tables().items():
        read = pd.read_csv(synthetic.folder / f"{name}.csv")
        assert list(read.columns) == list(table.columns) and len(read) == len(table), name
    pw = pd.read_csv(synthetic.folder / "pairwise.csv")
    assert np.allclose(pw["p_t"], a.comparisons.pairwise["p_t"], equal_nan=True)
    for name in ("trials", "best", "importances"):
        assert (synthetic.folder / f"tuning_{name}.csv").is_file()


# -- a real study, run once ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "o"
    code = main(
        [
            "run",
            "--out",
            str(out),
            "--models",
            FAST_MODEL,
            "--image-size",
            "16",
            "--budget",
            "fixed",
            "--no-budget-control",
            "--epochs",
            "1",
            "--min-steps",
            "2",
            "--fractions",
            "0.1,0.25",
            "--seeds",
            "1",
            "--jobs",
            "1",
            "--quiet",
        ]
    )  # small subsets: few steps
    assert code == 0
    return out


BLOCK_TORCH = """import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'torch':
            raise ImportError('torch is blocked in this process')
sys.meta_path.insert(0, NoTorch())
"""


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_real_study_report_is_regenerated_from_the_store_alone_and_identically(real_study):
    folder = real_study / "report"
    before = _files(folder)
    assert {
        "index.html",
        "report.md",
        "figures/learning_curves.png",
        "figures/confusion_test_resnet.png",
        "pairwise.csv",
    } <= set(before)
    # `study report` in a process where importing torch fails: the report needs only the store
    code = f"{BLOCK_TORCH}from study.cli import main; raise SystemExit(main(['report', '--out', {str(real_study)!r}]))"
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    after = _files(folder)
    assert after.keys() == before.keys()
    changed = [name for name in before if before[name] != after[name]]
    assert changed == []


def test_real_study_report_shows_the_measured_costs_and_names_classes(real_study):
    page = parse_page(real_study / "report" / "index.html")
    assert page.errors == [] and [i for i in page.ids if i in SECTION_IDS] == SECTION_IDS
    assert "costs-not-measured" not in page.ids and "no-tuning" in page.ids  # `study run` measures costs by default
    costs = page.tables["model-costs-table"]
    assert len(costs) == 2 and costs[1][0] == FAST_MODEL and costs[0][3] == "Input (px)" and costs[1][3] == "16"
    data = load_study(f"sqlite:///{real_study / 'study.db'}")
    assert len(data.done) == 2
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)
    env_rows = page.tables["environment-table"]
    assert "torch" in env_rows[0] and any("2.14" in cell or "." in cell for cell in env_rows[1])


# -- a real browser -------------------------------------------------------------------------------

CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var out = [];
  for (var i = 0; i < document.images.length; i++) {
    var img = document.images[i];
    out.push((img.complete ? 'ok' : 'incomplete') + ' ' + img.naturalWidth + 'x' + img.naturalHeight);
  }
  var pre = document.createElement('pre');
  pre.id = 'image-check';
  pre.textContent = out.join('\\n');
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_headless_chromium_renders_every_image(synthetic, tmp_path):
    """Render index.html in headless Chromium (Debian's `chromium`) and read every image's
    natural size after load: a broken image has width 0. The check script goes into a copy."""
    browser = chromium()
    if browser is None:
        if os.environ.get("STUDY_REQUIRE_CHROMIUM"):
            pytest.fail("chromium is required here (STUDY_REQUIRE_CHROMIUM is set) but not installed")
        pytest.skip("chromium is not installed (apt-get install chromium); the browser check runs in CI")
    html = (synthetic.folder / "index.html").read_text(encoding="utf-8")
    page = tmp_path / "index.html"
    page.write_text(html.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
    ]
    proc = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    match = re.search(r'<pre id="image-check">(.*?)</pre>', proc.stdout, re.S)
    assert match, proc.stdout[-2000:]
    results = match.group(1).split("\n")
    assert len(results) == len(synthetic.page.images) > 0
    for line in results:
        status, size = line.split()
        width, height = map(int, size.split("x"))
        assert status == "ok" and width > 100 and height > 50, line


def test_report_command_takes_targets_and_refuses_bad_ones(real_study, tmp_path, cli):
    code, out, err = cli(
        "report", "--storage", f"sqlite:///{real_study / 'study.db'}", "--out", tmp_path, "--targets", "0.3,0.5"
    )
    assert code == 0, err
    targets = pd.read_csv(tmp_path / "report" / "targets.csv")
    assert targets["target"].tolist() == [0.3, 0.5]
    assert "30.0% accuracy" in (tmp_path / "report" / "report.md").read_text(encoding="utf-8")
    for bad, fragment in (("1.5", "--targets value 1.5 is invalid"), ("0.8,x", "--targets value 'x' is not a number")):
        code, out, err = cli("report", "--out", real_study, "--targets", bad)
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("study: error: ") and fragment in lines[0]


def test_tuning_read_from_a_real_optuna_study_in_the_store(tmp_path):
    """With issue 3's analysis.tuning on the branch, write_report reads the study's Optuna
    studies from its own database (the convention of study.store.tuning_study_name)."""
    pytest.importorskip("analysis.tuning", reason="analysis.tuning (issue 3) is not on this branch yet")
    import optuna

    from study.store import tuning_study_name

    made = make_study(
        tmp_path / "study.db", curves={"a": (0.9, 2.0, 0.5), "b": (0.85, 2.0, 0.5)}, fractions=(0.5, 1.0), seeds=2
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for model in ("a", "b"):
        study = optuna.create_study(
            storage=made.url,
            study_name=tuning_study_name(made.name, model, "fraction", 0.5),
            direction="maximize",
            sampler=optuna.samplers.RandomSampler(seed=0),
        )
        for key, value in {"study": made.name, "model": model, "size_kind": "fraction", "size_value": 0.5}.items():
            study.set_user_attr(key, value)

        def objective(trial):
            trial.set_user_attr("epochs_run", 3)
            lr = trial.suggest_float("lr", 1e-5, 1e-1, log=True)
            return (
                0.9
                - abs(np.log10(lr) + 3) / 10
                + (0.02 if trial.suggest_categorical("augment", ["none", "light"]) == "light" else 0)
            )

        study.optimize(objective, n_trials=6)
    data = load_study(made.url)
    folder = write_report(data, tmp_path, analysis=analyse(data, n_boot_curves=10, n_boot_stats=100))
    page = parse_page(folder / "index.html")
    header, *rows = page.tables["tuning-best-table"]
    assert [r[0] for r in rows] == ["a", "b"] and {"augment", "lr"} <= set(header)
    assert (folder / "figures" / "tuning_history.png").is_file() and (folder / "tuning_trials.csv").is_file()
    assert len(pd.read_csv(folder / "tuning_trials.csv")) == 12


def test_main_tables_are_written_as_csv_and_latex_that_parses(synthetic):
    from tests.test_verdict import assert_balanced_latex

    for name in ("table_accuracy", "table_pairs", "table_costs", "table_convergence"):
        csv = pd.read_csv(synthetic.folder / f"{name}.csv")
        tex = (synthetic.folder / f"{name}.tex").read_text(encoding="utf-8")
        assert_balanced_latex(tex, columns=len(csv.columns))
        assert r"\begin{tabular}" in tex and rf"\label{{tab:{name}}}" in tex
    accuracy = pd.read_csv(synthetic.folder / "table_accuracy.csv")
    assert accuracy["Model"].tolist() == ["MobileNetV2", "MobileViT-XXS", "ResNet-18"]
    assert [c for c in accuracy.columns if "macro-F1" in c]  # macro-F1 beside accuracy


@pytest.mark.parametrize(
    "seeds, fractions",
    [(2, (0.25, 0.5, 1.0)), (1, (0.1, 0.25, 0.5, 1.0))],
    ids=["2 seeds at 3 sizes", "1 seed at 4 sizes"],
)
def test_too_few_seeds_for_a_curve_interval_still_builds_a_report_without_one(tmp_path, seeds, fractions):
    # each model's curve can be fitted, but leaving one seed out leaves too few runs to refit it
    made = make_study(
        tmp_path / "study.db", curves={"a": (0.9, 2.0, 0.5), "b": (0.85, 1.0, 0.4)}, fractions=fractions, seeds=seeds
    )
    data = load_study(made.url)
    a = analyse(data, n_boot_curves=10, n_boot_stats=100)
    folder = write_report(data, tmp_path, analysis=a)

    assert set(a.curves.curves) == {"a", "b"}
    assert not any(c.has_interval for c in a.curves.curves.values())
    for frame in (a.bands, a.needed, a.ratios, a.crossovers):
        assert len(frame) and frame[["ci_low", "ci_high"]].isna().all().all()
    assert a.needed["n_star"].notna().all()  # the estimate stays, only its interval is absent
    warned = a.warnings[a.warnings["check"] == "too_few_seeds"]["message"]
    for model in ("a", "b"):
        (text,) = [m for m in warned if m.startswith(f"{model}: too few seeds for an interval on the learning curve")]
        assert "3 seeds are needed" in text
    md = (folder / "report.md").read_text(encoding="utf-8")
    assert "too few seeds for an interval on the learning curve" in md
    assert "no interval: too few seeds" in md and "too few seeds) (interval of at least 95%)" not in md
    assert (folder / "figures" / "data_needed.png").is_file()
