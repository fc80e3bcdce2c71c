"""The configuration's JSON schema: the single source of every setting and its default.

The workflow validates ``config.yaml`` against ``workflow/schemas/config.schema.yaml``;
the package ships the same file (``config.schema.yaml`` here is a link to it, copied into
wheels) so that the command line, the settings and the tests read the same defaults and
give the same messages, also from a non-editable install.
"""

from __future__ import annotations

import difflib
import functools
from importlib import resources
from typing import Any

import yaml


@functools.cache
def load_schema() -> dict[str, Any]:
    """The configuration schema, parsed once per process."""
    text = resources.files(__package__).joinpath("config.schema.yaml").read_text("utf-8")
    return yaml.safe_load(text)


def defaults() -> dict[str, Any]:
    """Every top-level setting that has a default, with that default (a fresh copy)."""
    props = load_schema()["properties"]
    return {k: _copy(v["default"]) for k, v in props.items() if "default" in v}


def _copy(value: Any) -> Any:
    """A deep copy of a YAML value, so that callers cannot change the cached schema."""
    return yaml.safe_load(yaml.safe_dump(value))


def overridable_keys() -> tuple[str, ...]:
    """The settings one experiment entry may override for itself (besides its sizes)."""
    props = load_schema()["definitions"]["experiment"]["properties"]
    return tuple(k for k in props if k not in ("size_a", "size_b"))


def describe_key(key: str) -> str:
    """The schema's description of a top-level setting, on one line."""
    return " ".join(str(load_schema()["properties"][key]["description"]).split())


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


def problems(config: dict[str, Any], schema: dict[str, Any] | None = None) -> list[str]:
    """The configuration's schema violations, one short sentence each.

    jsonschema's own messages print the whole schema; a user needs the key, the
    experiment, and what is wrong. Unknown keys get a suggestion, since they are
    usually typos (``trails`` for ``trials``).
    """
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(load_schema() if schema is None else schema)
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
