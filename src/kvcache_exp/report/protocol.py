"""The report's Method page: the protocol, written from the run's own settings.

The front page stays short (a reader opens the report on it); the protocol (conditions,
configurations, the steps of a trial, what is verified, the cures) gets this page of its
own, rendered from exactly the settings the rule passes (:data:`PROTOCOL_SETTINGS`), so
that it describes this run rather than the defaults.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from kvcache_exp.report.pages import write_page


def _axis(spec: Any) -> str:
    """One axis of a sweep as it was written: a size, a list, or start to stop by step."""
    if isinstance(spec, dict):
        return f"{spec['start']} to {spec['stop']} in steps of {spec['step']}"
    if isinstance(spec, list):
        return ", ".join(str(v) for v in spec)
    return str(spec)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _configurations(settings: dict[str, Any], configurations: list[dict[str, Any]]) -> str:
    """The configurations of the run: the sweep as written, or one line per (A, B)."""
    written, n = settings["experiments"], len(configurations)
    if isinstance(written, dict):
        sweep = written.get("sweep") or {}
        if sweep.get("total") is not None:
            given = "size_a" if "size_a" in sweep else "size_b"
            what = (
                f"A sweep with A + B = {sweep['total']} tokens and "
                f"{'A' if given == 'size_a' else 'B'} = {_axis(sweep[given])} tokens: "
            )
        else:
            what = (
                f"A sweep over every combination of A = {_axis(sweep.get('size_a'))} tokens "
                f"and B = {_axis(sweep.get('size_b'))} tokens: "
            )
        return (
            f"<p>{html.escape(what + _plural(n, 'configuration'))}. Each is its own job with "
            "its own pair of CSV files.</p>"
        )
    items = []
    for c in configurations:
        q = c.get("query_tokens", settings["query_tokens"])
        extra = ", ".join(f"{k} {v}" for k, v in c.items() if k not in ("size_a", "size_b"))
        line = (
            f"A = {c['size_a']}, B = {c['size_b']}: a miss recomputes {c['size_b'] + q} "
            f"tokens, a hit {q}" + (f" ({extra})" if extra else "")
        )
        items.append(f"<li>{html.escape(line)}</li>")
    return (
        f"<p>{_plural(n, 'configuration')}, each its own job with its own pair of CSV files "
        f"(A tokens removed on a miss, B tokens kept):</p><ul>{''.join(items)}</ul>"
    )


def _engine_sentence(settings: dict[str, Any]) -> str:
    """Which engine ran the model, in words (escaped HTML)."""
    engine, server = settings["engine"], settings.get("server") or {}
    if engine == "llama_server":
        return "served by a llama-server that each configuration's job starts and stops"
    if engine == "openai_http":
        url = html.escape(str(server.get("base_url")))
        return f"served by the running server at <code>{url}</code>"
    return "run in-process through llama-cpp-python's API (no HTTP server)"


def _conditions(settings: dict[str, Any]) -> str:
    """The table of the two conditions, with the kept prefix S when there is one."""
    s = "S, " if settings["keep_tokens"] else ""
    q = settings["query_tokens"]
    cached = f"all of <code>[{s}A, B]</code>"
    miss_cached = "S only" if s else "nothing (the prefix differs from the first token)"
    rows = [
        ("hit", f"<code>[{s}A, B, Q]</code>", cached, f"Q ({q})"),
        ("miss", f"<code>[{s}B, Q]</code>, A removed", miss_cached, "B + Q"),
    ]
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    head = (
        "<tr><th>condition</th><th>prompt</th><th>reusable from the cache</th>"
        "<th>tokens the TTFT call must evaluate</th></tr>"
    )
    return f"<table><thead>{head}</thead><tbody>{body}</tbody></table>"


def _where_cures(settings: dict[str, Any], configurations: list[dict[str, Any]]) -> str:
    """Which configurations measure the cures, in words ('' when all of them do)."""
    cured = [c for c in configurations if c.get("cures", settings["cures"])]
    if len(cured) == len(configurations):
        return ""
    names = ", ".join(f"A = {c['size_a']}, B = {c['size_b']}" for c in cured)
    return (
        f" They are measured in {_plural(len(cured), 'configuration')} ({names}); the others "
        "set <code>cures: false</code>."
    )


def _cures(settings: dict[str, Any], configurations: list[dict[str, Any]]) -> str:
    """What the cures' part of the run measures, for this engine."""
    if not any(c.get("cures", settings["cures"]) for c in configurations):
        return "<p>Not measured in this run (<code>cures: false</code>).</p>"
    engine, api = settings["engine"], (settings.get("server") or {}).get("api")
    if engine != "llama_cpp_python" and api != "llama_server":
        return (
            "<p>Through the OpenAI API only the hit and the miss are measured: the cures "
            "need llama.cpp's cache operations or llama-server's own KV shift.</p>"
        )
    if engine != "llama_cpp_python":
        cures = (
            "<li><strong>server_cache_reuse</strong>: llama-server's own KV shift "
            "(<code>--cache-reuse</code>), which must reuse S + B and evaluate Q.</li>"
        )
        quality = "the first position where its greedy continuation diverges"
    else:
        shares = ", ".join(f"{r:g}" for r in settings["recompute_shares"])
        cures = (
            "<li><strong>shift</strong>: remove A's cells from the KV cache and shift B's "
            "into place (llama.cpp re-rotates their RoPE keys), then evaluate Q alone.</li>"
            "<li><strong>shift + recompute r (tail)</strong>, r = "
            f"{html.escape(shares)}: as shift, then recompute the last r of B's tokens "
            "together with Q.</li>"
            "<li><strong>shift + recompute r (head)</strong>, the same r: as shift, then "
            "recompute the first r of B's tokens (in llama.cpp's second sequence, from S's "
            "cells), so that the start of the cache is exact again; the same cost.</li>"
        )
        quality = (
            "KL divergence, top-1 agreement, the RMS change of the reference token's "
            "probability, and the first position where greedy generation diverges; after "
            "each call the cache must hold exactly one cell per position of the prompt"
        )
    keeps = ", ".join(str(k) for k in settings["cure_keep_tokens"])
    return (
        f"<p>Besides the hit and the miss, the cures are measured at every kept prefix "
        f"size S = {html.escape(keeps)} (S = 0: no cell of the cache was computed as a "
        f"first token, the worst case), on {settings['quality_prompts']} distinct prompts "
        "each: trial t restores a snapshot of prompt t's warmed cache before each cure "
        "(in a shuffled order) and times what keeping B's cache instead would cost:</p>"
        f"<ul>{cures}</ul><p>Each cure's quality is measured against the exact answer (a "
        f"full recompute) over Q and {settings['quality_tokens']} tokens of that "
        f"answer's continuation: {quality}. The miss reaches the exact answer through the "
        "cures' own path: it is the noise floor of the comparison."
        f"{_where_cures(settings, configurations)}</p>"
    )


#: The settings the Method page describes (the rule passes exactly these, so that
#: changing one of them, and no other, rebuilds the page).
PROTOCOL_SETTINGS: tuple[str, ...] = (
    "model",
    "engine",
    "server",
    "n_ctx",
    "n_gpu_layers",
    "experiments",
    "trials",
    "query_tokens",
    "max_tokens",
    "warmup_tokens",
    "settle_ms",
    "seed",
    "keep_tokens",
    "cures",
    "cure_keep_tokens",
    "quality_prompts",
    "recompute_shares",
    "quality_tokens",
    "require_cache_verified",
)


def protocol_html(settings: dict[str, Any], configurations: list[dict[str, Any]]) -> str:
    """The protocol of the run, with its own settings (the body of the Method page).

    ``settings`` holds the run's configuration (``experiments`` as the user wrote it,
    a list or a sweep, and the global values); ``configurations`` the (A, B) points it
    expands to, each with its own overrides. Every number shown comes from them, so the
    page describes this run, not the defaults.
    """
    s = settings
    model = html.escape(str(s["model"]))
    overridden = isinstance(s["experiments"], list) and any("trials" in c for c in configurations)
    server = s["engine"] != "llama_cpp_python"
    if server:
        clearing = (
            "empties the server's cache with the request <code>server.cache_clear</code> "
            "names; the warm-up must then reuse no token"
        )
        counters = (
            "the server's own counts of the tokens each request took from its cache and evaluated"
        )
    else:
        clearing = (
            "clears the KV cache completely: llama-cpp-python's token counter <em>and</em> "
            "llama.cpp's cached data (<code>llama_memory_clear</code>; rewinding the "
            "counter alone leaves the data in place), and checks that the cache's highest "
            "position is then -1, i.e. empty"
        )
        counters = (
            "llama.cpp's own performance counters (<code>llama_perf_context</code>: tokens "
            "evaluated in batches and one by one, and the milliseconds each took)"
        )
    if s["require_cache_verified"]:
        verified = (
            "this run was set to fail on any trial that was not verified, so every number "
            "in the report comes from trials that behaved as designed."
        )
    else:
        verified = (
            "this run was set to keep unverified trials with a warning: check the "
            "<code>n_unverified</code> column of the summary."
        )
    prefix = (
        f"<p>A kept prefix S of {s['keep_tokens']} tokens (a system prompt) comes before A: "
        "A is removed from the middle, as chat front-ends do.</p>"
        if s["keep_tokens"]
        else ""
    )
    sleep = f"sleeps {s['settle_ms']} ms"
    held = "S, A, B" if s["keep_tokens"] else "A, B"
    body = (
        "<h1>The protocol</h1>"
        f'<p class="lead">How every number in this report was measured, with this run\'s '
        f"settings: <code>{model}</code> {_engine_sentence(s)}, a context window of "
        f"{s['n_ctx']} tokens and <code>n_gpu_layers</code> = {s['n_gpu_layers']}. The Run "
        "page says on which machine, with which build, and how many layers really ran on "
        "a GPU.</p>"
        "<h2>Hypothesis</h2>"
        "<p>When the shared prefix changes (context A removed), the KV cache cannot be "
        "reused and the retained context B must be computed again. So the time to first "
        "token (TTFT) of a <em>miss</em> should be far above that of a <em>hit</em>, which "
        "keeps the whole prefix; it should grow linearly with B while the hit's stays "
        "constant; and the speed of decoding one token after another should not depend on "
        "the cache at all.</p>"
        "<h2>Conditions</h2>"
        f"<p>Every prompt ends with the same query Q of {s['query_tokens']} tokens. Both "
        "conditions start from the same warmed cache:</p>"
        f"{_conditions(s)}{prefix}"
        f"<h2>Configurations</h2>{_configurations(s, configurations)}"
        "<h2>Trials</h2>"
        f"<p>{s['trials']} trials per condition"
        f"{' (unless a configuration overrides it)' if overridden else ''}, a hit and a "
        "miss in each trial, the hit first in odd trials and the miss first in even ones "
        f"(the <code>order</code> column), greedy sampling with seed {s['seed']}. Every "
        "trial:</p><ol>"
        f"<li>{clearing};</li>"
        f"<li>warms the cache with <code>[{held}]</code>, generating {s['warmup_tokens']} "
        "tokens;</li>"
        f"<li>{sleep};</li>"
        "<li>measures <strong>TTFT</strong>: the wall time of evaluating what of the "
        "condition's prompt is not cached and sampling exactly one token;</li>"
        f"<li>{sleep};</li>"
        "<li>measures <strong>throughput</strong>: a generation of at most "
        f"{s['max_tokens']} tokens from the same prompt (it continues from the cached "
        "prompt, so it holds no prefill), tokens generated over its wall time.</li></ol>"
        "<p>Inside each timed region is only the engine's work; the prompt's batches are "
        "laid out before the timer starts.</p>"
        "<h2>What is verified</h2>"
        f"<p>Cache reuse is verified, not assumed: around every timed call the workflow "
        f"reads {counters}. A hit's TTFT call must have evaluated exactly Q's tokens, a "
        "miss's all of B and Q, and every warm-up the whole prefix after an empty cache. "
        "Each trial's row records the result in <code>cache_verified</code>; unverified "
        f"trials never enter a statistic or a verdict; {verified}</p>"
        f"<h2>Cures</h2>{_cures(s, configurations)}"
    )
    return body


def protocol_page(
    settings: dict[str, Any], configurations: list[dict[str, Any]], out_html: Path
) -> None:
    """The report's Method page: :func:`protocol_html` as a standalone page."""
    write_page(out_html, "The protocol", protocol_html(settings, configurations))
