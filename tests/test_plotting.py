"""The figures are written as valid, non-trivial PNGs for any number of configurations."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
from synthetic import SEED_CONFIGS, make_results

from kvcache_exp.columns import SEED_RESULT_COLUMNS
from kvcache_exp.report import plotting

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path: Path) -> None:
    """A real PNG that matplotlib reads back, with some content in it."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 10_000
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 500
    assert image.std() > 0.01  # not a blank canvas
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left


SWEEP = [(256, b) for b in (64, 128, 256, 512, 768, 1024, 1536, 2048)]


@pytest.mark.parametrize(
    ("configs", "trials"),
    [(SEED_CONFIGS[:1], 10), (SEED_CONFIGS, 10), (SEED_CONFIGS, 1), (SWEEP, 3)],
    ids=["1-config", "3-configs", "1-trial", "8-config-sweep"],
)
def test_plots_are_written(tmp_path, configs, trials):
    df = make_results(configs, trials=trials)
    main, tokens = tmp_path / "a" / "main.png", tmp_path / "b" / "tokens.png"
    plotting.plot_all_configs(df, main, "SmolLM2-135M")
    plotting.plot_ttft_vs_tokens(df, tokens, "SmolLM2-135M")
    _assert_png(main)
    _assert_png(tokens)


def test_plots_of_seed_csvs_without_our_columns(tmp_path):
    df = make_results()
    extras = [c for c in df.columns if c not in SEED_RESULT_COLUMNS + ("size_a", "size_b")]
    df[extras] = float("nan")
    plotting.plot_all_configs(df, tmp_path / "a" / "main.png", "gpt2")
    plotting.plot_ttft_vs_tokens(df, tmp_path / "b" / "tokens.png", "gpt2")
    _assert_png(tmp_path / "a" / "main.png")
    _assert_png(tmp_path / "b" / "tokens.png")


def test_configurations_keep_the_order_of_the_results():
    df = make_results([(256, 512), (512, 256)], trials=2)
    assert plotting.configurations(df) == [(256, 512), (512, 256)]
    assert plotting.configurations(pd.concat([df, df])) == [(256, 512), (512, 256)]
