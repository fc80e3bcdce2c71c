"""`snakemake --report` after a small run, opened in headless Chromium as a reader would.

The report is a React app whose results are embedded as data: URIs; HTML results (the
summary, prompts and run pages) are shown in an iframe. The browser tests drive the
app through its own functions (what a click calls), read what the page and the iframe
display over the DevTools protocol, and compare it with the workflow's files. The front
page is also rendered on its own, the way Snakemake renders it, and the protocol page
for settings the small run does not use (sweeps, per-configuration overrides, servers).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from browser import Page, chromium, open_browser
from workflow_copy import REPO, copy_workflow, small_config, snakemake, write_config

from kvcache_exp.config import schema
from kvcache_exp.config import settings as kv_settings
from kvcache_exp.report import protocol

needs_chromium = pytest.mark.skipif(
    chromium() is None, reason="chromium is not installed (make browser)"
)

SIZES = [(48, 24), (24, 48), (36, 36)]
CATEGORIES = {
    "Method",
    "Summary",
    "TTFT",
    "Throughput",
    "Cures",
    "Conversations",
    "Prompts",
    "Run",
    "Measurements",
}
FIGURES = {
    "plots/experiment1_all_configs_phase3b.png": ("TTFT", "percentile-bootstrap"),
    "plots/ttft_vs_tokens_recomputed.png": ("TTFT", "least-squares fit"),
    "plots/throughput.png": ("Throughput", "Decode only"),
    "plots/cures_cost_quality.png": ("Cures", "noise floor"),
    "plots/conversations_ttft.png": ("Conversations", "Dropping the oldest turn"),
    "plots/conversations_tokens.png": ("Conversations", "what the cache saved"),
    "plots/conversations_quality.png": ("Conversations", "how many shifts"),
}


# --- The front page, rendered as Snakemake renders it -------------------------------


def render_front_page(config: dict[str, Any]) -> str:
    """workflow.rst as HTML, the way ``snakemake --report`` renders it.

    Snakemake fills the Jinja2 template (trim_blocks, lstrip_blocks) with the config and
    appends link targets for its categories, then docutils makes HTML. Here docutils
    stops at the first warning, so a template that produces broken RST for some
    configuration fails the test instead of showing an error box in the report.
    """
    from docutils.core import publish_parts
    from jinja2 import Environment

    class Snakemake:
        pass

    Snakemake.config = config
    links = "\n\n" + "".join(f".. _{c}: javascript:app.showCategory('{c}')\n" for c in CATEGORIES)
    source = (REPO / "workflow/report/workflow.rst").read_text() + links
    rst = (
        Environment(trim_blocks=True, lstrip_blocks=True)
        .from_string(source)
        .render(snakemake=Snakemake, categories={}, files=[])
    )
    settings = {"report_level": 2, "halt_level": 2}
    return publish_parts(rst, writer="html", settings_overrides=settings)["html_body"]


def _text(html_text: str) -> str:
    """Visible text, with whitespace collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", html_text).split())


def _config(**changes: Any) -> dict[str, Any]:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config.pop("models")
    config.update(changes)
    return config


def test_front_page_is_short_and_names_every_category():
    """Title, the question, one line per category: the protocol has its own page."""
    body = render_front_page(_config())
    text = _text(body)
    assert "KV-cache prefix invalidation" in text
    for category in CATEGORIES:
        assert f"javascript:app.showCategory('{category}')" in body, category
    assert len(re.findall(r"<li>", body)) == len(CATEGORIES)
    assert "{{" not in text and "{%" not in text


# --- The protocol page, rendered from the settings the rule passes -------------------


def render_protocol(config: dict[str, Any]) -> str:
    """The Method page's text for ``config``, given exactly what the rule passes."""
    full = {**schema.defaults(), **config}
    settings = {key: full[key] for key in protocol.PROTOCOL_SETTINGS}
    return _text(protocol.protocol_html(settings, kv_settings.expand_experiments(full)))


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        (
            {},
            [
                "3 configurations",
                "A = 512, B = 256: a miss recomputes 272 tokens, a hit 16",
                "10 trials per condition, a hit",
                "sleeps 500 ms",
                "a generation of at most 50 tokens",
                "set to fail on any trial that was not verified",
                "run in-process through llama-cpp-python",
                "shift + recompute r (tail) , r = 0.1, 0.5",
                "shift + recompute r (head) , the same r",
                "kept prefix size S = 0, 4, 32",
                "on 8 distinct prompts each",
                "They are measured in 1 configuration (A = 384, B = 384)",
            ],
        ),
        (
            {
                "experiments": {
                    "sweep": {"size_a": 256, "size_b": {"start": 64, "stop": 1024, "step": 64}}
                }
            },
            ["A = 256 tokens and B = 64 to 1024 in steps of 64 tokens: 16 configurations"],
        ),
        (
            {"experiments": {"sweep": {"total": 768, "size_b": [128, 256, 512]}}},
            ["A + B = 768 tokens and B = 128, 256, 512 tokens: 3 configurations"],
        ),
        (
            {
                "experiments": [{"size_a": 64, "size_b": 32, "trials": 20, "query_tokens": 8}],
                "require_cache_verified": False,
            },
            [
                "1 configuration,",
                "a miss recomputes 40 tokens, a hit 8 (trials 20, query_tokens 8)",
                "unless a configuration overrides it",
                "keep unverified trials with a warning",
            ],
        ),
        (
            {"keep_tokens": 32, "cures": False},
            ["[S, A, B, Q]", "[S, B, Q] , A removed", "S of 32 tokens", "cures: false"],
        ),
        (
            {"engine": "llama_server"},
            ["llama-server that each configuration's job starts", "server_cache_reuse"],
        ),
        (
            {
                "engine": "openai_http",
                "server": {"base_url": "http://127.0.0.1:8000", "api": "openai"},
            },
            ["the running server at http://127.0.0.1:8000", "only the hit and the miss"],
        ),
    ],
    ids=["list", "sweep-grid", "sweep-total", "overrides", "kept-prefix", "server", "openai"],
)
def test_protocol_page_describes_the_runs_settings(changes, expected):
    text = render_protocol(_config(**changes))
    assert "The protocol" in text
    for phrase in expected:
        assert phrase in text


# --- The real report, in Chromium ----------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory, model_path):
    """(workdir, report path) after a small run and `snakemake --report`."""
    workdir = copy_workflow(tmp_path_factory.mktemp("report") / "repo")
    write_config(
        workdir,
        "small.yaml",
        {
            **small_config(),
            "model": str(model_path),
            "experiments": [{"size_a": a, "size_b": b} for a, b in SIZES],
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


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where the screenshots go (pytest prints the base temp dir with -v; look at them)."""
    return tmp_path_factory.mktemp("screenshots")


def _settle(page: Page) -> None:
    page.evaluate("new Promise(r => setTimeout(r, 400))")


def show(page: Page, category: str, path: str) -> None:
    """What a reader's clicks do: open the category, the result's entry, and view it."""
    page.evaluate(f"app.showCategory({category!r})")
    page.evaluate(f"app.showResultInfo({path!r})")
    kind = "img" if path.endswith(".png") else "html"
    page.evaluate(
        f"app.setView({{content: {kind!r}, contentPath: results[{path!r}].data_uri, "
        f"resultPath: {path!r}}})"
    )
    _settle(page)


def in_frame(page: Page, expression: str) -> Any:
    """Evaluate ``expression`` inside the iframe the report shows an HTML result in."""
    return page.evaluate(expression, page.frame_context("data:text/html"))


_TABLES = (
    "[...document.querySelectorAll('table')]"
    ".map(t => [...t.rows].map(r => [...r.cells].map(c => c.textContent)))"
)


@pytest.mark.browser
@needs_chromium
def test_page_loads_without_errors(built, page, shots):
    page.screenshot(shots / "front.png")
    assert page.errors == []
    assert page.evaluate("document.getElementById('loading-screen').style.display") == "none"
    assert page.evaluate("document.querySelector('.system-message') === null")
    # The front page carries no CSS of its own: Snakemake's class names are not an API.
    assert page.evaluate("document.querySelector('#app h1.title') !== null")
    text = page.evaluate("document.querySelector('#app').innerText")
    assert "KV-cache prefix invalidation" in text
    assert set(page.evaluate("Object.keys(categories)")) == CATEGORIES


_BOX = (
    "(() => {{ const r = document.querySelector({!r}).getBoundingClientRect(); "
    "return [r.top, r.bottom, r.left, r.right]; }})()"
)


@pytest.mark.browser
@needs_chromium
def test_title_is_visible_on_opening_at_a_laptops_size(built, shots):
    """Snakemake centres the front page vertically without scrolling, so a page taller
    than the window hides its own title: at 1366 x 768 the reader must see it at once."""
    _, report = built
    width, height = 1366, 768
    with open_browser(window=(width, height)) as laptop:
        laptop.navigate(report.as_uri(), settle_s=2.0)
        laptop.screenshot(shots / "front_1366x768.png")
        assert laptop.evaluate("[window.innerWidth, window.innerHeight]") == [width, height]
        for element in ("#app h1.title", "#app h1.title + p"):
            top, bottom, left, right = laptop.evaluate(_BOX.format(element))
            assert 0 <= top < bottom <= height, (element, top, bottom)
            assert 0 <= left < right <= width, (element, left, right)
        assert laptop.errors == []


@pytest.mark.browser
@needs_chromium
def test_protocol_page_shows_the_runs_settings(built, page, shots):
    paths = page.evaluate("Object.keys(results)")
    assert "results/report/protocol.html" in paths
    show(page, "Method", "results/report/protocol.html")
    page.screenshot(shots / "protocol.png")
    assert in_frame(page, "document.querySelector('h1').textContent") == "The protocol"
    text = " ".join(in_frame(page, "document.body.innerText").split())
    assert "2 trials per condition" in text
    assert f"{len(SIZES)} configurations" in text
    for a, b in SIZES:  # rendered with the run's own settings
        assert f"A = {a}, B = {b}: a miss recomputes {b + 16} tokens" in text
    assert page.errors == []


@pytest.mark.browser
@needs_chromium
def test_figures_are_present_with_captions(built, page, shots):
    workdir, _ = built
    paths = page.evaluate("Object.keys(results)")
    for figure, (category, phrase) in FIGURES.items():
        assert figure in paths
        assert figure in page.evaluate(f"categories[{category!r}]['Other']")
        show(page, category, figure)
        size = page.evaluate(
            f"(() => {{ const i = [...document.querySelectorAll('#app img')].find("
            f"i => i.src === results[{figure!r}].data_uri); "
            "return i ? [i.naturalWidth, i.naturalHeight] : null; })()"
        )
        assert size is not None and size[0] > 500 and size[1] > 300, figure
        assert phrase in page.evaluate("document.querySelector('#app nav').innerText"), figure
        embedded = page.evaluate(f"results[{figure!r}].data_uri.split(',')[1]")
        assert embedded == _base64(workdir / figure), figure
        page.screenshot(shots / Path(figure).name)
    assert page.errors == []


def _base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _agrees(shown: str, expected: float) -> bool:
    """Whether a number as displayed is ``expected`` rounded to the digits shown."""
    mantissa, _, exponent = shown.partition("e")
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    unit = 10.0 ** (int(exponent or 0) - decimals)
    return abs(float(shown) - expected) <= unit / 2 * (1 + 1e-9) + 1e-12


def _check_row(cells: list[str], header: list[str], columns: dict[str, list[str]], expected):
    for name, cell in zip(header, cells, strict=True):
        if name not in columns:
            continue
        shown = _NUMBER.findall(cell)
        assert len(shown) == len(columns[name]), (name, cell)
        for value, column in zip(shown, columns[name], strict=True):
            assert _agrees(value, float(expected[column])), (name, cell, column, expected[column])


@pytest.mark.browser
@needs_chromium
def test_summary_shown_equals_summary_csv(built, page, shots):
    workdir, _ = built
    show(page, "Summary", "results/report/summary.html")
    page.screenshot(shots / "summary.png")
    tables = in_frame(page, _TABLES)
    summary = pd.read_csv(workdir / "results/summary.csv")
    checks = {
        "Cache Hit TTFT": {
            "Cache Hit TTFT": ["hit_ttft_ms"],
            "Cache Miss TTFT": ["miss_ttft_ms"],
            "Degradation": ["degradation_pct"],
        },
        "n hit / miss": {
            "n hit / miss": ["n_hit", "n_miss"],
            "Hit median ms [95% CI]": ["hit_ttft_ms", "hit_ttft_ci_low_ms", "hit_ttft_ci_high_ms"],
            "Miss median ms [95% CI]": [
                "miss_ttft_ms",
                "miss_ttft_ci_low_ms",
                "miss_ttft_ci_high_ms",
            ],
            "Hit mean ± sd ms": ["hit_ttft_mean_ms", "hit_ttft_std_ms"],
            "Miss mean ± sd ms": ["miss_ttft_mean_ms", "miss_ttft_std_ms"],
            "Degradation [95% CI]": [
                "degradation_pct",
                "degradation_ci_low",
                "degradation_ci_high",
            ],
            "Mann-Whitney U": ["mannwhitney_u"],
            "p (two-sided)": ["mannwhitney_p"],
        },
    }
    for key, columns in checks.items():
        table = next(t for t in tables if t[0][0] == "Config (A/B)" and t[0][1] == key)
        header, rows = table[0], table[1:]
        assert set(columns) <= set(header)
        assert len(rows) == len(summary)
        for cells in rows:
            a, b = (int(v) for v in re.findall(r"\d+", cells[0]))
            expected = summary[(summary.size_a == a) & (summary.size_b == b)].iloc[0]
            _check_row(cells, header, columns, expected)
    md = (workdir / "results/summary.md").read_text()
    verdict_lines = [ln for ln in md.splitlines() if ln.startswith("- **")]
    assert verdict_lines
    assert in_frame(page, "document.querySelectorAll('.verdict').length") == len(verdict_lines)
    assert page.errors == []


@pytest.mark.browser
@needs_chromium
def test_prompts_pages_show_exactly_what_was_sent(built, page, shots):
    workdir, _ = built
    for a, b in SIZES:
        show(page, "Prompts", f"results/report/prompts_a{a}_b{b}.html")
        rows = in_frame(
            page,
            "[...document.querySelectorAll('tbody tr')].map(r => ["
            "r.cells[0].querySelector('strong').textContent, r.cells[1].textContent, "
            "r.cells[2].textContent, r.cells[3].textContent, "
            "[...r.cells[2].querySelectorAll('.seg')].map(s => s.title).join('')])",
        )
        prompts = pd.read_csv(
            workdir / f"prompts/prompts_phase3b_a{a}_b{b}.csv", keep_default_na=False
        )
        assert [r[0] for r in rows] == list(prompts.prompt_name)
        for shown, sent in zip(rows, prompts.itertuples(), strict=True):
            assert int(shown[1]) == sent.token_count
            assert shown[2] == sent.prompt_text
            assert shown[3] == sent.sample_output
        assert [r[4] for r in rows] == ["AB", "ABQ", "BQ"]
        legend = in_frame(page, "document.querySelector('.legend').textContent")
        assert f"{a} tokens, removed on a miss" in legend and f"{b} tokens, kept" in legend
        assert "16 tokens, the query" in legend
        assert f"prompts/prompts_phase3b_a{a}_b{b}.csv" in page.evaluate("Object.keys(results)")
    page.screenshot(shots / "prompts.png")
    assert page.errors == []


@pytest.mark.browser
@needs_chromium
def test_run_page_shows_the_machine_and_model(built, page, shots):
    workdir, _ = built
    meta = json.loads((workdir / "results/run_metadata.json").read_text())
    show(page, "Run", "results/report/run.html")
    page.screenshot(shots / "run.png")
    cells = dict(
        in_frame(
            page,
            "[...document.querySelectorAll('tr')]"
            ".map(r => [r.cells[0].textContent, r.cells[1].textContent])",
        )
    )
    assert cells["sha256"] == meta["model"]["sha256"]
    assert cells["llama-cpp-python"] == meta["software"]["llama_cpp_python"]
    assert cells["llama.cpp system info"] == meta["software"]["llama_cpp_system_info"]
    assert cells["layers offloaded"] == str(meta["hardware"]["layers_offloaded"])
    assert cells["threads"] == str(meta["hardware"]["n_threads"])
    assert cells["CPU"] == meta["hardware"]["cpu"]
    lead = in_frame(page, "document.querySelector('p.lead').textContent")
    assert meta["model"]["name"] in lead and meta["software"]["llama_cpp_python"] in lead
    assert page.errors == []
