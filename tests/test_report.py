"""`snakemake --report` after a small run, opened in headless Chromium as a reader would."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from browser import chromium, open_browser
from workflow_copy import copy_workflow, snakemake, write_config

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium() is None, reason="chromium is not installed (make browser)"),
]

SIZES = [(48, 24), (24, 48), (36, 36)]
CATEGORIES = {"Summary", "TTFT", "Throughput", "Prompts", "Run", "Measurements"}
FIGURES = (
    "plots/experiment1_all_configs_phase3b.png",
    "plots/ttft_vs_tokens_recomputed.png",
    "plots/throughput.png",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory, model_path):
    """(workdir, report path) after a small run and `snakemake --report`."""
    workdir = copy_workflow(tmp_path_factory.mktemp("report") / "repo")
    write_config(
        workdir,
        "small.yaml",
        {
            "model": str(model_path),
            "experiments": [{"size_a": a, "size_b": b} for a, b in SIZES],
            "trials": 2,
            "settle_ms": 0,
            "n_threads": 2,
        },
    )
    snakemake(workdir, "--cores", "2", "--resources", "gpu=1", "--configfile", "small.yaml")
    snakemake(workdir, "--report", "report.html", "--configfile", "small.yaml")
    return workdir, workdir / "report.html"


@pytest.fixture(scope="module")
def page(built):
    _, report = built
    with open_browser() as page:
        page.navigate(report.as_uri(), settle_s=2.0)
        yield page


def _decoded(page, path: str) -> str:
    """The text of an embedded result, decoded by the page itself from its data URI."""
    return page.evaluate(
        f"(() => {{ const u = results[{path!r}].data_uri; "
        "return new TextDecoder().decode(Uint8Array.from(atob(u.split(',')[1]), "
        "c => c.charCodeAt(0))); })()"
    )


def test_page_loads_without_errors(built, page, tmp_path):
    shot = page.screenshot(tmp_path / "front.png")
    assert shot.stat().st_size > 10_000
    assert page.errors == []
    text = page.evaluate("document.body.innerText")
    assert "KV-cache prefix invalidation" in text
    assert "Trial protocol" in text
    for a, b in SIZES:  # the front page is rendered with the run's configuration
        assert f"A = {a}, B = {b}" in text
    assert set(page.evaluate("Object.keys(categories)")) == CATEGORIES


def test_figures_are_present_and_render(built, page, tmp_path):
    paths = page.evaluate("Object.keys(results)")
    for figure in FIGURES:
        assert figure in paths
        page.evaluate(f"app.setView({{content: 'img', contentPath: results[{figure!r}].data_uri}})")
        page.evaluate("new Promise(r => setTimeout(r, 500))")
        size = page.evaluate(
            f"(() => {{ const i = [...document.querySelectorAll('#app img')].find("
            f"i => i.src === results[{figure!r}].data_uri); "
            "return i ? [i.naturalWidth, i.naturalHeight] : null; })()"
        )
        assert size is not None and size[0] > 500 and size[1] > 300, figure
    page.screenshot(tmp_path / "figure.png")
    assert page.errors == []


def test_summary_shown_equals_summary_csv(built, page, tmp_path):
    workdir, _ = built
    page.evaluate("app.showCategory('Summary')")
    page.evaluate(
        "app.setView({content: 'html', "
        "contentPath: results['results/report/summary.html'].data_uri})"
    )
    page.evaluate("new Promise(r => setTimeout(r, 500))")
    page.screenshot(tmp_path / "summary.png")
    assert page.evaluate("document.querySelector('#app iframe') !== null")
    shown = _decoded(page, "results/report/summary.html")
    rows = page.evaluate(
        "(() => { const d = new DOMParser().parseFromString("
        + repr(shown)
        + ", 'text/html'); return [...d.querySelector('table').rows].map("
        "r => [...r.cells].map(c => c.textContent)); })()"
    )
    assert rows[0] == ["Config (A/B)", "Cache Hit TTFT", "Cache Miss TTFT", "Degradation"]
    summary = pd.read_csv(workdir / "results/summary.csv")
    assert len(rows) == 1 + len(summary)
    for row in rows[1:]:
        a, b = (int(v) for v in re.findall(r"\d+", row[0]))
        expected = summary[(summary.size_a == a) & (summary.size_b == b)].iloc[0]
        assert row[1] == f"{expected.hit_ttft_ms:.1f} ms"
        assert row[2] == f"{expected.miss_ttft_ms:.1f} ms"
        assert row[3] == f"{expected.degradation_pct:+.0f}%"
    assert "Verdicts on the seed" in shown
    assert page.errors == []


def test_prompts_and_run_pages(built, page):
    workdir, _ = built
    for a, b in SIZES:
        shown = _decoded(page, f"results/report/prompts_a{a}_b{b}.html")
        prompts = pd.read_csv(
            workdir / f"prompts/prompts_phase3b_a{a}_b{b}.csv", keep_default_na=False
        )
        for row in prompts.itertuples():
            assert f"<td>{row.prompt_name}</td><td>{row.token_count}</td>" in shown
    run = _decoded(page, "results/report/run.html")
    assert "llama_cpp_python" in run and "0.3.36" in run
    assert "sha256" in run and "layers_offloaded" in run
