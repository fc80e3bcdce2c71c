"""Experiment settings: merging the global configuration with per-experiment overrides,
and the checks that a JSON schema cannot express.

Both the Snakemake workflow (``workflow/rules/common.smk``) and the plain command line
use these, so a bad setting gets the same message whichever way the user runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

#: Settings an experiment entry may override; everything else is global.
OVERRIDABLE = (
    "trials",
    "query_tokens",
    "max_tokens",
    "warmup_tokens",
    "settle_ms",
    "seed",
)

#: Defaults, the same as in workflow/schemas/config.schema.yaml and config.yaml.
DEFAULTS: dict[str, Any] = {
    "trials": 10,
    "query_tokens": 16,
    "n_ctx": 2048,
    "max_tokens": 50,
    "warmup_tokens": 6,
    "settle_ms": 500,
    "n_gpu_layers": -1,
    "n_threads": None,
    "n_batch": 512,
    "seed": 42,
    "prompt_text_file": None,
    "require_cache_verified": True,
}


class SettingsError(ValueError):
    """A configuration that cannot run; the message names the key and the experiment."""


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

    @property
    def label(self) -> str:
        """The seed's file-name tag, e.g. ``a512_b256``."""
        return f"a{self.size_a}_b{self.size_b}"

    @property
    def longest_context(self) -> int:
        """Tokens in the longest prompt plus every token generated after it."""
        return self.size_a + self.size_b + self.query_tokens + self.max_tokens

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def experiment_label(size_a: int, size_b: int) -> str:
    return f"a{size_a}_b{size_b}"


def merge(config: dict[str, Any], experiment: dict[str, Any], n_threads: int) -> ExperimentSettings:
    """The settings of one experiment: its own overrides over the global values."""
    values = {**DEFAULTS, **{k: v for k, v in config.items() if k in DEFAULTS}}
    values.update({k: v for k, v in experiment.items() if k in OVERRIDABLE})
    if values.get("n_threads") is None:
        values["n_threads"] = n_threads
    names = {f.name for f in fields(ExperimentSettings)}
    values = {k: v for k, v in values.items() if k in names}
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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


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
    problems: list[str] = []
    try:
        experiments = expand_experiments(config)
    except SettingsError as exc:
        return [str(exc)]
    if not experiments:
        problems.append("experiments: the list is empty; give at least one {size_a, size_b}")
    seen: dict[tuple[int, int], int] = {}
    for index, exp in enumerate(experiments):
        where = f"experiments[{index}] (size_a={exp.get('size_a')}, size_b={exp.get('size_b')})"
        sizes_ok = True
        for key, minimum in (("size_a", 1), ("size_b", 1)):
            value = exp.get(key)
            if not _is_int(value) or value < minimum:
                problems.append(f"{where}: {key} must be an integer >= {minimum}, got {value!r}")
                sizes_ok = False
        if not sizes_ok:
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
            problems.append(
                f"{where}: the hit prompt (A+B+Q = {settings.size_a}+{settings.size_b}+"
                f"{settings.query_tokens}) plus max_tokens={settings.max_tokens} needs {need} "
                f"tokens, more than n_ctx={n_ctx}"
            )
        if model_context is not None and need > model_context:
            problems.append(
                f"{where}: needs {need} tokens of context, more than {model_name} was trained "
                f"for ({model_context} tokens, {context_source})"
            )
    return problems


def _where(path: list[Any], config: dict[str, Any]) -> str:
    """A readable location such as ``experiments[2] (size_a=-5, size_b=10).size_a``."""
    out = ""
    node: Any = config
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and "size_a" in node:
                out += f" (size_a={node.get('size_a')}, size_b={node.get('size_b')})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "config"


def _leaf_errors(error: Any) -> list[Any]:
    """The errors that say what is wrong, inside a ``oneOf``/``anyOf`` failure.

    For "a list or a sweep" the user meant the branch whose type matches what they
    wrote; the errors of that branch are the useful ones.
    """
    if not error.context:
        return [error]
    branches: dict[Any, list[Any]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    matching = [
        errs
        for errs in branches.values()
        if not any(e.validator == "type" and not e.relative_path for e in errs)
    ]
    if len(matching) != 1:
        return [error]
    return [leaf for sub in matching[0] for leaf in _leaf_errors(sub)]


def schema_problems(config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """The configuration's schema violations, one short sentence each.

    jsonschema's own messages print the whole schema; a user needs the key, the
    experiment, and what is wrong. Unknown keys get a suggestion, since they are
    usually typos (``trails`` for ``trials``).
    """
    import difflib

    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    problems = []
    leaves = [leaf for error in validator.iter_errors(config) for leaf in _leaf_errors(error)]
    for detail in sorted(leaves, key=lambda e: [str(p) for p in e.absolute_path]):
        where = _where(list(detail.absolute_path), config)
        if detail.validator == "additionalProperties":
            allowed = list(detail.schema.get("properties", {}))
            extra = [k for k in detail.instance if k not in allowed]
            for key in extra:
                hint = difflib.get_close_matches(key, allowed, n=1)
                suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
                problems.append(
                    f"{where}: unknown key {key!r}{suggestion} (known: {', '.join(allowed)})"
                )
            continue
        problems.append(f"{where}: {detail.message}")
    return problems


def describe(settings: ExperimentSettings) -> str:
    """One line for logs."""
    return ", ".join(f"{k}={v}" for k, v in settings.as_dict().items())
