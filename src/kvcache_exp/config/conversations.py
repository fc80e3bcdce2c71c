"""The conversation replay's settings: the ``conversations`` block, one replay job's
settings, and the checks that need several values at once.

The schema (``workflow/schemas/config.schema.yaml``) holds every default and checks each
value; what it cannot express is here, used alike by the workflow (at parse time) and by
``kvcache-chat``, so that a bad setting gets the same message whichever way it runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from kvcache_exp.config import schema
from kvcache_exp.config.settings import (
    ENGINES,
    SERVER_ENGINES,
    ServerSettings,
    SettingsError,
)


def _conversation_defaults() -> dict[str, Any]:
    """The ``conversations`` mapping's defaults, from the schema (the single source)."""
    return dict(schema.defaults().get("conversations") or {})


@dataclass(frozen=True)
class ConversationSettings:
    """The ``conversations`` block: the replay of conversations turn by turn.

    ``budget_tokens`` None means ``n_ctx`` less ``reply_tokens`` (see
    :meth:`ConversationJob.budget`).
    """

    enabled: bool
    builtin: dict[str, int]
    replies: str
    reply_tokens: int
    quality_tokens: int
    budget_tokens: int | None
    policies: list[dict[str, Any]]
    cache: list[str] | None
    shift_min_tokens: int
    render: str
    shard_size: int

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> ConversationSettings:
        """The schema's defaults overlaid with ``values`` (a partial mapping is fine)."""
        defaults = _conversation_defaults()
        merged = {**defaults, **dict(values or {})}
        merged["builtin"] = {**defaults["builtin"], **dict(merged.get("builtin") or {})}
        return cls(**{f.name: merged[f.name] for f in fields(cls)})

    def labels(self) -> list[str]:
        """The policies' names in file names: each entry's ``label``, else its name."""
        return [str(p.get("label") or p["name"]) for p in self.policies]

    def caches(self, engine: str, server: ServerSettings) -> list[str]:
        """The cache behaviours replayed: the list given, or (``cache: null``) the prefix
        and the engine's own shift: ``shift`` in-process, ``server_reuse`` on llama-server,
        none on another server, so that changing the engine stays one setting."""
        if self.cache is not None:
            return list(self.cache)
        if engine == "llama_cpp_python":
            return ["prefix", "shift"]
        if engine == "llama_server" or server.api == "llama_server":
            return ["prefix", "server_reuse"]
        return ["prefix"]

    def policy(self, label: str) -> dict[str, Any]:
        """The policy entry with this label."""
        for entry, name in zip(self.policies, self.labels(), strict=True):
            if name == label:
                return dict(entry)
        raise SettingsError(f"conversations.policies: no policy labelled {label!r}")


#: Each policy's own parameters (any other is refused).
POLICY_PARAMETERS: dict[str, tuple[str, ...]] = {
    "none": (),
    "drop_oldest": (),
    "drop_chunk": ("target",),
    "truncate_middle": ("keep_first",),
    "context_shift": ("n_keep",),
}
#: The engines that can take each cache behaviour, and what to use instead.
CACHE_ENGINES: dict[str, tuple[tuple[str, ...], str]] = {
    "prefix": (ENGINES, ""),
    "shift": (
        ("llama_cpp_python",),
        "llama.cpp's cache operations in-process (engine llama_cpp_python); on llama-server "
        "use server_reuse",
    ),
    "server_reuse": (
        SERVER_ENGINES,
        "llama-server's --cache-reuse (engine llama_server, or openai_http with "
        "server.api llama_server); in-process use shift",
    ),
}


@dataclass(frozen=True)
class ConversationJob:
    """Everything one replay job needs besides the model file: the set, the policy and
    the cache behaviour it replays, the replay's settings and the engine's."""

    set: str
    policy: dict[str, Any]
    cache: str
    conversations_file: str | None
    chat_template_file: str | None
    replay: ConversationSettings
    n_ctx: int
    n_batch: int
    n_threads: int
    n_gpu_layers: int
    seed: int
    flash_attn: bool
    cache_type_k: str
    cache_type_v: str
    require_cache_verified: bool
    engine: str = field(default_factory=lambda: schema.defaults()["engine"])
    server: ServerSettings = field(default_factory=lambda: ServerSettings.from_mapping(None))

    def __post_init__(self) -> None:
        # From Snakemake's params (a dict round trip) the nested settings arrive as mappings.
        if not isinstance(self.server, ServerSettings):
            object.__setattr__(self, "server", ServerSettings.from_mapping(self.server))
        if not isinstance(self.replay, ConversationSettings):
            object.__setattr__(self, "replay", ConversationSettings.from_mapping(self.replay))

    @property
    def label(self) -> str:
        """The policy's label."""
        return str(self.policy.get("label") or self.policy["name"])

    @property
    def budget(self) -> int:
        """The prompt budget the policy truncates to."""
        found = self.replay.budget_tokens
        return self.n_ctx - self.replay.reply_tokens if found is None else int(found)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def conversation_job(
    config: dict[str, Any], job_set: str, policy: str, cache: str, n_threads: int
) -> ConversationJob:
    """The settings of one replay job (``policy`` is a policy's label)."""
    names = {f.name for f in fields(ConversationJob)}
    values = {k: v for k, v in schema.defaults().items() if k in names}
    values.update({k: v for k, v in config.items() if k in names})
    replay = ConversationSettings.from_mapping(config.get("conversations"))
    values.update(
        replay=replay,
        server=ServerSettings.from_mapping(config.get("server")),
        policy=replay.policy(policy),
    )
    if values.get("n_threads") is None:
        values["n_threads"] = n_threads
    return ConversationJob(set=job_set, cache=cache, **values)


def check_conversations(
    config: dict[str, Any],
    model_context: int | None = None,
    model_name: str = "the model",
    context_source: str = "from its GGUF metadata",
) -> list[str]:
    """Checks of the ``conversations`` block that need several values at once (the
    schema has checked each value), and the budget against the context the model was
    trained for, when known. Reads the configuration only."""
    if not (config.get("conversations") or {}).get("enabled", True):
        return []
    replay = ConversationSettings.from_mapping(config.get("conversations"))
    n_ctx = int(config.get("n_ctx", schema.defaults()["n_ctx"]))
    engine = config.get("engine", schema.defaults()["engine"])
    server = ServerSettings.from_mapping(config.get("server"))
    problems = []
    seen: dict[str, int] = {}
    for index, (entry, name) in enumerate(zip(replay.policies, replay.labels(), strict=True)):
        where = f"conversations.policies[{index}] ({name})"
        if name in seen:
            problems.append(
                f"{where}: the label {name!r} is also policies[{seen[name]}]'s; give each entry "
                "its own `label`, since each writes its own CSVs"
            )
        seen.setdefault(name, index)
        own = POLICY_PARAMETERS[entry["name"]]
        for key in entry:
            if key not in ("name", "label", *own):
                allowed = ", ".join(own) or "none"
                problems.append(
                    f"{where}: {key} is not a parameter of {entry['name']} (its own: {allowed})"
                )
        n_keep = entry.get("n_keep")
        if isinstance(n_keep, int) and replay.budget_tokens and n_keep >= replay.budget_tokens:
            problems.append(
                f"{where}: n_keep={n_keep} leaves nothing of budget_tokens="
                f"{replay.budget_tokens} to shift"
            )
    budget = n_ctx - replay.reply_tokens
    if replay.budget_tokens is not None:
        budget = replay.budget_tokens
    if budget < 16:
        problems.append(
            f"conversations.budget_tokens: n_ctx={n_ctx} less reply_tokens={replay.reply_tokens} "
            f"leaves {budget} tokens for the prompt; raise n_ctx or set budget_tokens"
        )
    if budget + replay.reply_tokens > n_ctx:
        problems.append(
            f"conversations.budget_tokens: a prompt of {budget} tokens and a reply of "
            f"{replay.reply_tokens} need {budget + replay.reply_tokens} tokens, more than "
            f"n_ctx={n_ctx}"
        )
    if model_context is not None and budget + replay.reply_tokens > model_context:
        problems.append(
            f"conversations.budget_tokens: a prompt of {budget} tokens and a reply of "
            f"{replay.reply_tokens} need {budget + replay.reply_tokens} tokens, more than "
            f"{model_name} was trained for ({model_context} tokens, {context_source})"
        )
    if replay.replies == "live" and replay.quality_tokens > replay.reply_tokens:
        problems.append(
            f"conversations.quality_tokens={replay.quality_tokens} is more than reply_tokens="
            f"{replay.reply_tokens}: quality is measured over the reply's tokens"
        )
    for cache in replay.cache or []:
        engines, instead = CACHE_ENGINES[cache]
        server_api = engine != "openai_http" or server.api == "llama_server"
        if engine not in engines or (cache == "server_reuse" and not server_api):
            problems.append(f"conversations.cache: {cache} needs {instead} (engine is {engine})")
    if replay.render == "server" and (engine not in SERVER_ENGINES or server.api != "llama_server"):
        problems.append(
            "conversations.render: server has llama-server render the messages with its own "
            f"template, which needs engine llama_server (or openai_http with server.api "
            f"llama_server); engine is {engine}"
        )
    shifted = [p["name"] for p in replay.policies if p["name"] == "context_shift"]
    if replay.render == "server" and shifted:
        problems.append(
            "conversations.render: server sends messages for the server to render, and "
            "context_shift cuts tokens, not messages; render: client replays it"
        )
    if replay.render == "server" and config.get("chat_template_file"):
        problems.append(
            "chat_template_file: with conversations.render server, the server renders with "
            "its own template; start it with --chat-template-file, or render: client"
        )
    return problems
