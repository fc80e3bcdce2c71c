"""Pages for ``snakemake --report``: the protocol, the prompts and the run, as HTML, and
the page wrapper the summary page uses too.

Snakemake's report shows images and HTML inline but offers CSV and JSON files only as
downloads. A reader should see the degradation table, the verdicts, the exact prompts
and the machine without downloading anything, so these small, self-contained pages
render the files the workflow already wrote (and, for the protocol, the run's settings).
Nothing here computes a measurement.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from kvcache_exp.outputs import atomic_open

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1e293b; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #cbd5e1; padding: 0.3rem 0.6rem; text-align: left;
         vertical-align: top; }
th { background: #f1f5f9; }
td.text { white-space: pre-wrap; max-width: 52rem; font-family: ui-monospace, monospace;
          font-size: 0.8rem; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.15rem; margin-top: 1.6rem; }
p.lead { max-width: 60rem; }
.verdict { font-weight: 600; padding: 0 0.35rem; border-radius: 0.25rem; white-space: nowrap; }
div.wide { overflow-x: auto; }
td.value { overflow-wrap: anywhere; }
.verdict.yes { background: #dcfce7; color: #166534; }
.verdict.no { background: #fee2e2; color: #991b1b; }
.verdict.maybe { background: #fef9c3; color: #854d0e; }
p.warning { background: #fef3c7; padding: 0.5rem 0.8rem; border-radius: 0.3rem; }
.seg { border-radius: 0.2rem; }
.seg.a { background: #fde68a; } .seg.b { background: #bfdbfe; } .seg.q { background: #bbf7d0; }
.legend span.seg { padding: 0.1rem 0.4rem; margin-right: 0.3rem; font-family: ui-monospace,
                   monospace; }
"""


def _page(title: str, body: str) -> str:
    """A standalone page: the report shows it in an iframe, so it carries its own style."""
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>\n{body}\n</body></html>\n"
    )


def split_segments(warmup: str, hit: str, miss: str) -> tuple[str, str, str] | None:
    """The texts of A, B and Q, from the three prompts' texts, or None if they do not fit.

    The prompts are built as ``warmup = A + B``, ``hit = A + B + Q``, ``miss = B + Q``
    (see :mod:`kvcache_exp.prompts`), so the three texts determine the segments exactly.
    Anything else (a prompts file from elsewhere) is shown unmarked rather than guessed.
    """
    a_len = len(hit) - len(miss)
    if not (hit.startswith(warmup) and hit.endswith(miss)) or not 0 <= a_len <= len(warmup):
        return None
    a, b, q = hit[:a_len], warmup[a_len:], hit[len(warmup) :]
    return (a, b, q) if b + q == miss and a + b == warmup else None


def _marked(text: str, segments: list[tuple[str, str]]) -> str:
    """``text`` with each (css class, segment) in turn wrapped in a coloured span."""
    if "".join(s for _, s in segments) != text:
        return html.escape(text)
    return "".join(
        f'<span class="seg {cls}" title="{cls.upper()}">{html.escape(s)}</span>'
        for cls, s in segments
    )


_PROMPT_ROLES = {
    "warmup": "<code>[A, B]</code>: run before each timed call, to fill the cache",
    "hit": "<code>[A, B, Q]</code>: starts with everything cached, so only Q is computed",
    "miss": "<code>[B, Q]</code>: A removed, no prefix in common with the cache",
}


def prompts_page(prompts_csv: Path, out_html: Path, label: str) -> None:
    """The three prompts of one configuration, exactly as sent, with A, B and Q marked."""
    df = pd.read_csv(prompts_csv, keep_default_na=False)
    by_name = {str(r.prompt_name): r for r in df.itertuples()}
    texts = {n: str(by_name[n].prompt_text) for n in ("warmup", "hit", "miss") if n in by_name}
    segments = split_segments(**texts) if len(texts) == 3 else None
    legend = ""
    parts: dict[str, list[tuple[str, str]]] = {}
    if segments is not None:
        a, b, q = segments
        counts = {n: int(by_name[n].token_count) for n in texts}
        n_a, n_q = counts["hit"] - counts["miss"], counts["hit"] - counts["warmup"]
        n_b = counts["warmup"] - n_a
        parts = {"warmup": [("a", a), ("b", b)], "hit": [("a", a), ("b", b), ("q", q)]}
        parts["miss"] = [("b", b), ("q", q)]
        legend = (
            '<p class="legend">'
            f'<span class="seg a">A</span>{n_a} tokens, removed on a miss &nbsp; '
            f'<span class="seg b">B</span>{n_b} tokens, kept &nbsp; '
            f'<span class="seg q">Q</span>{n_q} tokens, the query</p>'
        )
    rows = "".join(
        f"<tr><td><strong>{html.escape(str(r.prompt_name))}</strong><br>"
        f"{_PROMPT_ROLES.get(str(r.prompt_name), '')}</td><td>{int(r.token_count)}</td>"
        f'<td class="text">{_marked(str(r.prompt_text), parts.get(str(r.prompt_name), []))}'
        f'</td><td class="text">{html.escape(str(r.sample_output))}</td></tr>'
        for r in df.itertuples()
    )
    body = (
        f"<h1>Prompts of configuration {html.escape(label)}</h1>"
        '<p class="lead">What the model was given: each prompt is a list of tokens, shown '
        "here as its text (which tokenizes back to exactly <em>tokens</em> tokens; no BOS "
        "token is added, so a miss shares nothing with the cache). The sample output is "
        "what the model generated from the prompt in the first trial: the warm-up's "
        "continuation, and the throughput generation of the hit and the miss.</p>"
        f"{legend}"
        "<table><thead><tr><th>prompt</th><th>tokens</th><th>text</th>"
        f"<th>sample output</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    write_page(out_html, f"Prompts {label}", body)


#: Readable names of run_metadata.json's keys; a key not listed is shown as it is.
_LABELS = {
    "name": "name",
    "path": "file",
    "size_bytes": "size",
    "sha256": "sha256",
    "general_name": "name in the GGUF",
    "context_length": "trained context length",
    "block_count": "layers (blocks)",
    "llama_cpp_python": "llama-cpp-python",
    "llama_cpp_system_info": "llama.cpp system info",
    "cpu": "CPU",
    "cpu_count": "logical CPUs",
    "gpus": "GPUs",
    "gpu_offload_supported": "build can offload to a GPU",
    "n_gpu_layers_requested": "n_gpu_layers requested",
    "layers_offloaded": "layers offloaded",
    "layers_total": "layers in the offload report",
    "offload_log": "llama.cpp's offload report",
    "n_threads": "threads",
}


def _value(key: str, value: Any) -> str:
    """One metadata value as a reader would want it (escaped HTML)."""
    if key == "size_bytes" and isinstance(value, int):
        return html.escape(f"{value:,} bytes ({value / 2**20:.1f} MiB)")
    if key == "experiments":
        return _experiments(value)
    if key == "gpus" and isinstance(value, list):
        return html.escape(", ".join(map(str, value)) or "none found")
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return "&mdash;"
    if isinstance(value, list | dict):
        return html.escape(json.dumps(value, default=str))
    return html.escape(str(value))


def _experiments(value: Any) -> str:
    """The configurations, one per line, or the sweep as it was written."""
    if isinstance(value, list):
        lines = []
        for e in value:
            extra = ", ".join(f"{k} {v}" for k, v in e.items() if k not in ("size_a", "size_b"))
            line = f"A={e.get('size_a')}, B={e.get('size_b')}"
            lines.append(f"{line} ({extra})" if extra else line)
        return "<br>".join(html.escape(line) for line in lines)
    return html.escape(json.dumps(value, default=str))


def _table(mapping: dict[str, Any], labelled: bool = True) -> str:
    """Key and value per row; keys read as words unless ``labelled`` is False (the
    configuration, whose keys are what a user types)."""
    rows = "".join(
        f"<tr><th>{html.escape(_LABELS.get(k, k) if labelled else k)}</th>"
        f'<td class="value">{_value(k, v)}</td></tr>'
        for k, v in mapping.items()
    )
    return f"<table><tbody>{rows}</tbody></table>"


_JOB_COLUMNS = ("host", "slurm_job_id", "n_threads", "started_at", "finished_at")


def _jobs(jobs: dict[str, dict[str, Any]]) -> str:
    """One row per configuration's job: where and when it ran."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("configuration", *_JOB_COLUMNS))
    rows = "".join(
        f"<tr><td>{html.escape(label)}</td>"
        + "".join(f"<td>{_value(c, job.get(c))}</td>" for c in _JOB_COLUMNS)
        + "</tr>"
        for label, job in jobs.items()
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    return f'<div class="wide">{table}</div>'


def run_sentence(meta: dict[str, Any]) -> str:
    """One sentence that says what ran where, for the top of the Run page."""
    model, soft, hw = meta.get("model", {}), meta.get("software", {}), meta.get("hardware", {})
    offloaded, total = hw.get("layers_offloaded") or 0, hw.get("layers_total")
    gpus = ", ".join(hw.get("gpus") or [])
    if offloaded:
        where = f"{offloaded}{f' of {total}' if total else ''} layers on the GPU ({gpus or 'GPU'})"
    elif gpus and not hw.get("gpu_offload_supported"):
        where = f"the CPU only ({gpus} present, but this build of llama.cpp cannot use it)"
    else:
        where = "the CPU only (no layer offloaded to a GPU)"
    return (
        f"{model.get('name', 'The model')} ({model.get('quantization') or 'unknown type'}) "
        f"ran on {where}, with {hw.get('n_threads', '?')} threads on "
        f"{hw.get('cpu', 'an unknown CPU')} ({hw.get('cpu_count', '?')} logical CPUs), "
        f"through llama-cpp-python {soft.get('llama_cpp_python', '?')}."
    )


def run_page(metadata_json: Path, out_html: Path) -> None:
    """The model, software, hardware and settings of the run."""
    meta = json.loads(metadata_json.read_text(encoding="utf-8"))
    sections = [
        ("Model", meta.get("model", {})),
        ("Software", meta.get("software", {})),
        ("Hardware", meta.get("hardware", {})),
    ]
    body = f'<h1>The run</h1><p class="lead">{html.escape(run_sentence(meta))}</p>' + "".join(
        f"<h2>{title}</h2>{_table(values)}" for title, values in sections
    )
    pooling = meta.get("pooling") or []
    if pooling:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in pooling)
        body += (
            f'<p class="warning">Configurations ran under different conditions:</p><ul>{items}</ul>'
        )
    body += f"<h2>Jobs, one per configuration</h2>{_jobs(meta.get('experiments') or {})}"
    body += f"<h2>Settings</h2>{_table(meta.get('config', {}), labelled=False)}"
    write_page(out_html, "The run", body)


def write_page(path: str | os.PathLike[str], title: str, body: str) -> None:
    """Write a standalone page with the report's style around ``body`` (HTML)."""
    with atomic_open(path) as fh:
        fh.write(_page(title, body))
