"""Experiment settings: merging the global configuration with per-experiment overrides,
and the checks that a JSON schema cannot express.

Both the Snakemake workflow (``workflow/rules/common.smk``) and the plain command line
use these, so a bad setting gets the same message whichever way the user runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from kvcache_exp import paths
from kvcache_exp.config import schema

#: Settings an experiment entry may override; everything else is global (from the schema).
OVERRIDABLE: tuple[str, ...] = schema.overridable_keys()


class SettingsError(ValueError):
    """A configuration that cannot run; the message names the key and the experiment."""


#: ``engine``: in-process (the seed's), a llama-server the job starts, or a running server.
ENGINES: tuple[str, ...] = ("llama_cpp_python", "llama_server", "openai_http")
SERVER_ENGINES: tuple[str, ...] = ("llama_server", "openai_http")


def _server_defaults() -> dict[str, Any]:
    """The ``server`` mapping's defaults, from the schema (the single source)."""
    return dict(schema.defaults().get("server") or {})


@dataclass(frozen=True)
class ServerSettings:
    """How to reach and drive an inference server (``engine`` llama_server or openai_http).

    ``cache_clear`` is a preset name (``llama_server``, ``vllm``, ``sglang``, ``none``) or a
    ``{method, path}`` mapping; ``cache_reuse`` is the chunk size (llama-server's
    ``n_cache_reuse``) of the ``server_cache_reuse`` cure.
    """

    base_url: str | None
    model: str | None
    api: str
    cache_clear: Any
    startup_timeout_s: float
    request_timeout_s: float
    cache_reuse: int

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> ServerSettings:
        """The schema's defaults overlaid with ``values`` (a partial mapping is fine)."""
        merged = {**_server_defaults(), **dict(values or {})}
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in merged.items() if k in names})


@dataclass(frozen=True)
class ExperimentSettings:
    """Everything one experiment job needs besides the model file."""

    size_a: int
    size_b: int
    trials: int
    query_tokens: int
    n_ctx: int
    max_tokens: int
    warmup_tokens: int
    settle_ms: int
    n_gpu_layers: int
    n_threads: int
    n_batch: int
    seed: int
    prompt_text_file: str | None
    require_cache_verified: bool
    flash_attn: bool
    cache_type_k: str
    cache_type_v: str
    keep_tokens: int
    cures: bool
    recompute_shares: list[float]
    quality_tokens: int
    cure_keep_tokens: list[int] = field(
        default_factory=lambda: schema.defaults()["cure_keep_tokens"]
    )
    quality_prompts: int = field(default_factory=lambda: schema.defaults()["quality_prompts"])
    engine: str = field(default_factory=lambda: schema.defaults()["engine"])
    server: ServerSettings = field(default_factory=lambda: ServerSettings.from_mapping(None))

    def __post_init__(self) -> None:
        # From Snakemake's params (or any dict round trip) the server arrives as a mapping.
        if not isinstance(self.server, ServerSettings):
            object.__setattr__(self, "server", ServerSettings.from_mapping(self.server))

    @property
    def is_server(self) -> bool:
        """Whether the engine is an inference server reached over HTTP."""
        return self.engine in SERVER_ENGINES

    @property
    def tag(self) -> str:
        """The configuration's file-name tag, e.g. ``a512_b256`` (:func:`kvcache_exp.paths.tag`)."""
        return paths.tag(self.size_a, self.size_b)

    def context_needs(self) -> list[tuple[int, str]]:
        """Every prompt with what is generated after it, as (tokens, description): the
        seed's hit and its generation and, with the cures, at each kept prefix S, the
        warmed ``[S, A, B]`` with its warm-up tokens and the exact answer ``[S, B, Q]``
        with its continuation."""
        a, b, q = self.size_a, self.size_b, self.query_tokens
        s = self.keep_tokens
        prefix, names = ("S+", f"{s}+") if s else ("", "")
        needs = [
            (
                s + a + b + q + self.max_tokens,
                f"the hit prompt ({prefix}A+B+Q = {names}{a}+{b}+{q}) plus "
                f"max_tokens={self.max_tokens}",
            )
        ]
        if self.cures:
            for k in self.cure_keep_tokens:
                needs.append(
                    (
                        k + a + b + max(q, self.warmup_tokens),
                        f"the cures' hit at S={k} (S+A+B+Q = {k}+{a}+{b}+{q}, or warm-up "
                        f"tokens {self.warmup_tokens} after S+A+B)",
                    )
                )
                needs.append(
                    (
                        k + b + q + self.quality_tokens,
                        f"the cures' exact answer at S={k} (S+B+Q = {k}+{b}+{q}) plus "
                        f"quality_tokens={self.quality_tokens}",
                    )
                )
        return needs

    @property
    def longest_context(self) -> int:
        """Tokens in the longest prompt plus every token generated after it."""
        return max(n for n, _ in self.context_needs())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def merge(config: dict[str, Any], experiment: dict[str, Any], n_threads: int) -> ExperimentSettings:
    """The settings of one experiment: its own overrides over the global values."""
    names = {f.name for f in fields(ExperimentSettings)}
    values = {k: v for k, v in schema.defaults().items() if k in names}
    values.update({k: v for k, v in config.items() if k in names})
    values.update({k: v for k, v in experiment.items() if k in OVERRIDABLE})
    values["server"] = ServerSettings.from_mapping(config.get("server"))
    if values.get("n_threads") is None:
        values["n_threads"] = n_threads
    return ExperimentSettings(
        size_a=int(experiment["size_a"]), size_b=int(experiment["size_b"]), **values
    )


def _values(spec: Any) -> list[int]:
    """A sweep axis: a single size, a list of sizes, or {start, stop, step}."""
    if isinstance(spec, dict):
        return list(range(spec["start"], spec["stop"] + 1, spec["step"]))
    if isinstance(spec, list):
        return [int(v) for v in spec]
    return [int(spec)]


def expand_experiments(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The list of experiments, expanding a ``{sweep: ...}`` into one entry per point."""
    experiments = config.get("experiments")
    if not isinstance(experiments, dict):
        return list(experiments or [])
    sweep = experiments.get("sweep") or {}
    total = sweep.get("total")
    if total is not None:
        if ("size_a" in sweep) == ("size_b" in sweep):
            raise SettingsError(
                "experiments.sweep: with `total`, give exactly one of size_a and size_b"
            )
        given = "size_a" if "size_a" in sweep else "size_b"
        other = "size_b" if given == "size_a" else "size_a"
        return [{given: v, other: total - v} for v in _values(sweep[given])]
    if "size_a" not in sweep or "size_b" not in sweep:
        raise SettingsError("experiments.sweep: give size_a and size_b, or total and one of them")
    return [
        {"size_a": a, "size_b": b}
        for a in _values(sweep["size_a"])
        for b in _values(sweep["size_b"])
    ]


def _context_need(settings: ExperimentSettings) -> str:
    """What needs the most context, in words, e.g. for an n_ctx that is too small."""
    need, what = max(settings.context_needs(), key=lambda n: n[0])
    return f"{what} needs {need} tokens"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_engine(config: dict[str, Any]) -> list[str]:
    """Checks of ``engine`` and ``server`` that need several values at once.

    Reads the configuration only: parsing the workflow never contacts a server.
    """
    engine = config.get("engine")  # absent: the in-process engine, which none of these concern
    server = {**_server_defaults(), **dict(config.get("server") or {})}
    problems: list[str] = []
    if engine == "openai_http" and not server.get("base_url"):
        problems.append(
            "server.base_url: engine openai_http needs the running server's URL, e.g. "
            "http://127.0.0.1:8080 (or use engine: llama_server to have the job start one)"
        )
    if engine == "llama_server" and server.get("base_url"):
        problems.append(
            "server.base_url: engine llama_server starts its own llama-server on a free "
            "loopback port; set base_url: null, or engine: openai_http to use the server at "
            f"{server['base_url']}"
        )
    if engine == "llama_server" and server.get("api") != "llama_server":
        problems.append(
            "server.api: engine llama_server talks to the llama-server it starts through its "
            "native API; set api: llama_server (api: openai is for engine openai_http)"
        )
    verified = config.get("require_cache_verified", schema.defaults()["require_cache_verified"])
    if engine == "openai_http" and server.get("cache_clear") == "none" and verified:
        problems.append(
            "server.cache_clear: none sends no clearing request, so nothing proves a trial "
            "starts with a cold cache and no trial can be cache-verified; set "
            "require_cache_verified: false to measure anyway (rows are written unverified)"
        )
    return problems


def check_experiments(
    config: dict[str, Any],
    model_context: int | None = None,
    model_name: str = "the model",
    context_source: str = "from its GGUF metadata",
) -> list[str]:
    """Semantic checks; returns one message per problem (empty when all is well).

    The schema already rejects wrong types; these are the checks that need several
    values at once: duplicates, and prompts that do not fit the context window or the
    model's trained context.
    """
    problems: list[str] = check_engine(config)
    try:
        experiments = expand_experiments(config)
    except SettingsError as exc:
        return [*problems, str(exc)]
    if not experiments:
        problems.append("experiments: the list is empty; give at least one {size_a, size_b}")
    seen: dict[tuple[int, int], int] = {}
    for index, exp in enumerate(experiments):
        where = f"experiments[{index}] (size_a={exp.get('size_a')}, size_b={exp.get('size_b')})"
        bad_sizes = [
            f"{where}: {key} must be an integer >= 1, got {value!r}"
            for key, value in ((k, exp.get(k)) for k in ("size_a", "size_b"))
            if not _is_int(value) or value < 1
        ]
        if bad_sizes:  # the checks below need both sizes
            problems.extend(bad_sizes)
            continue
        key = (exp["size_a"], exp["size_b"])
        if key in seen:
            problems.append(
                f"{where}: duplicate of experiments[{seen[key]}]; each (size_a, size_b) "
                "may appear once, since both write the same CSV files"
            )
            continue
        seen[key] = index
        settings = merge(config, exp, n_threads=1)
        n_ctx = settings.n_ctx
        need = settings.longest_context
        if need > n_ctx:
            problems.append(f"{where}: {_context_need(settings)}, more than n_ctx={n_ctx}")
        reuse = settings.server.cache_reuse
        if (
            settings.is_server
            and settings.cures
            and settings.server.api == "llama_server"
            and settings.size_b < reuse
        ):
            problems.append(
                f"{where}: server.cache_reuse={reuse} is more than B={settings.size_b}: "
                "llama-server reuses only cached chunks of at least that many tokens, so the "
                "server_cache_reuse cure could not keep B; lower server.cache_reuse"
            )
        if model_context is not None and need > model_context:
            problems.append(
                f"{where}: needs {need} tokens of context, more than {model_name} was trained "
                f"for ({model_context} tokens, {context_source})"
            )
    return problems


def describe(settings: ExperimentSettings) -> str:
    """One line for logs."""
    return ", ".join(f"{k}={v}" for k, v in settings.as_dict().items())
