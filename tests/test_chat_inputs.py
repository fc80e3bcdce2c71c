"""The replay's inputs: conversation files (both forms, every error with its line), the
built-in set, and the chat template rendered as llama-cpp-python renders it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llama_cpp import llama_chat_format

from kvcache_exp.chat.source import (
    ASSISTANT,
    SYSTEM,
    USER,
    ConversationError,
    Message,
    builtin_conversations,
    read_conversations,
    set_name,
    shard,
    shard_names,
)
from kvcache_exp.chat.template import ChatTemplate, TemplateError, read_template_file


def write_lines(path: Path, *records: object) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


OPENAI = {
    "id": "a",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}],
        },
        {"role": "user", "content": "Bye"},
    ],
}
SHAREGPT = {
    "conversations": [
        {"from": "human", "value": "What is a cache?"},
        {"from": "gpt", "value": "A store."},
    ]
}


def test_both_forms_are_read_with_their_lines(tmp_path):
    path = write_lines(tmp_path / "chats.jsonl", OPENAI, "", SHAREGPT)
    first, second = read_conversations(path)
    assert (first.id, first.line, first.system) == ("a", 1, Message(SYSTEM, "Be brief."))
    assert [(t.user.content, t.reply and t.reply.content) for t in first.turns] == [
        ("Hello", "Hi!"),
        ("Bye", None),
    ]
    assert (second.id, second.line, second.system) == ("3", 3, None)
    assert second.turns[0].reply == Message(ASSISTANT, "A store.")
    assert second.where == "chats.jsonl, line 3 (id '3')"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", r"chats.jsonl, line 2: not JSON"),
        ("[1, 2]", r"line 2: expected a JSON object, got list"),
        (
            '{"messages": [{"role": "tool", "content": "x"}]}',
            r"line 2, message 1: unknown role 'tool'",
        ),
        (
            '{"conversations": [{"from": "bot", "value": "x"}]}',
            r"line 2, message 1: unknown speaker 'bot'",
        ),
        (
            '{"messages": [{"role": "assistant", "content": "x"}]}',
            r"line 2, message 1: expected the user's message",
        ),
        (
            '{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}',
            r"line 2, message 2: expected the assistant's message, got a user",
        ),
        (
            '{"messages": [{"role": "system", "content": "s"}]}',
            r"line 2: the conversation has no user",
        ),
        (
            '{"messages": [{"role": "user", "content": 3}]}',
            r"line 2, message 1: the content must be",
        ),
        ('{"prompt": "x"}', r"line 2: a line holds an object with either `messages`"),
        ('{"messages": []}', r"line 2: `messages` must be a non-empty list"),
        (
            '{"id": "a", "messages": [{"role": "user", "content": "x"}]}',
            r"line 2: id 'a' was already used on line 1",
        ),
    ],
)
def test_a_bad_line_is_named(tmp_path, line, message):
    path = write_lines(tmp_path / "chats.jsonl", OPENAI, line)
    with pytest.raises(ConversationError, match=message):
        read_conversations(path)


def test_an_empty_or_missing_file_is_refused(tmp_path):
    with pytest.raises(ConversationError, match="holds no conversation"):
        read_conversations(write_lines(tmp_path / "empty.jsonl", "", "  "))
    with pytest.raises(ConversationError, match="no such conversation file"):
        read_conversations(tmp_path / "missing.jsonl")


def test_the_builtin_set_is_deterministic_and_alternates():
    made = builtin_conversations(2, 3, 20, 10)
    assert made == builtin_conversations(2, 3, 20, 10)
    assert made[0].turns != made[1].turns
    for conversation in made:
        assert conversation.system is not None and len(conversation.turns) == 3
        for turn in conversation.turns:
            assert turn.user.role == USER and turn.user.content.endswith("?")
            assert len(turn.user.content.split()) >= 20 and turn.reply.role == ASSISTANT


def test_large_sets_are_cut_into_shards(tmp_path):
    records = [{"messages": [{"role": "user", "content": f"q{i}"}]} for i in range(5)]
    conversations = read_conversations(write_lines(tmp_path / "my chats.v2.jsonl", *records))
    assert set_name(tmp_path / "my chats.v2.jsonl") == "my-chats" and set_name(None) == "builtin"
    assert shard_names("my-chats", 5, 2) == ["my-chats.1", "my-chats.2", "my-chats.3"]
    assert shard_names("my-chats", 5, 5) == ["my-chats"]
    assert [c.id for c in shard(conversations, "my-chats.3", 2)] == ["5"]
    assert len(shard(conversations, "my-chats", 2)) == 5
    with pytest.raises(ConversationError, match="no such shard"):
        shard(conversations, "my-chats.4", 2)


# --------------------------------------------------------------------------- templates

MESSAGES = [
    [Message(USER, "Hello")],
    [
        Message(SYSTEM, "Be brief."),
        Message(USER, "Hi"),
        Message(ASSISTANT, "Hey"),
        Message(USER, "Ünïcode?"),
    ],
]


@pytest.mark.parametrize("generation", [True, False])
@pytest.mark.parametrize("messages", MESSAGES)
@pytest.mark.parametrize(
    "source",
    [
        llama_chat_format.CHATML_CHAT_TEMPLATE,
        "{{ bos_token }}{% for m in messages %}{{ m.content | tojson }}"
        "{% generation %}!{% endgeneration %}\n{% endfor %}",
    ],
    ids=["chatml", "tojson-generation"],
)
def test_rendering_matches_llama_cpp_pythons_formatter(source, messages, generation):
    """The same text as llama-cpp-python's Jinja2ChatFormatter, the in-process engine's own."""
    ours = ChatTemplate(source, bos_token="<s>", eos_token="</s>", origin="test")
    theirs = llama_chat_format.Jinja2ChatFormatter(
        source, eos_token="</s>", bos_token="<s>", add_generation_prompt=generation
    )
    expected = theirs(messages=[m.as_dict() for m in messages]).prompt
    assert ours.render(messages, add_generation_prompt=generation) == expected


def test_the_default_models_template_renders_as_llama_cpp_python(model_path):
    """The GGUF's own template with its own BOS and EOS texts, as llama-cpp-python loads
    them for its chat handler."""
    from llama_cpp import Llama

    from kvcache_exp.engines.chat_vocab import ChatVocabulary
    from kvcache_exp.measure.rendering import load_template

    vocab = ChatVocabulary(model_path)
    try:
        template = load_template(vocab, None)
    finally:
        vocab.close()
    assert "tokenizer.chat_template" in template.origin
    llm = Llama(str(model_path), vocab_only=True, verbose=False)
    try:
        eos = llm._model.token_get_text(llm.token_eos())
        bos = llm._model.token_get_text(llm.token_bos())
        formatter = llama_chat_format.Jinja2ChatFormatter(
            llm.metadata["tokenizer.chat_template"], eos_token=eos, bos_token=bos
        )
    finally:
        llm.close()
    assert (template.bos_token, template.eos_token) == (bos, eos)
    for messages in MESSAGES:
        expected = formatter(messages=[m.as_dict() for m in messages]).prompt
        assert template.render(messages, add_generation_prompt=True) == expected


def test_a_template_that_refuses_says_so_and_where():
    template = ChatTemplate(
        llama_chat_format.MISTRAL_INSTRUCT_CHAT_TEMPLATE,
        bos_token="<s>",
        eos_token="</s>",
        origin="mistral",
    )
    with pytest.raises(
        TemplateError,
        match="mistral refused it: Conversation roles must alternate.* for chats, line 4",
    ):
        template.render(MESSAGES[1], add_generation_prompt=True, where="chats, line 4")


def test_a_broken_template_file_is_named(tmp_path):
    with pytest.raises(TemplateError, match=r"from bad.jinja does not parse: .*template line 1"):
        ChatTemplate("{% for m in messages %}", bos_token="", eos_token="", origin="bad.jinja")
    config = tmp_path / "tokenizer_config.json"
    config.write_text(json.dumps({"chat_template": "{{ messages[0].content }}"}))
    assert read_template_file(config) == "{{ messages[0].content }}"
    (tmp_path / "empty.jinja").write_text("\n")
    with pytest.raises(TemplateError, match="is empty"):
        read_template_file(tmp_path / "empty.jinja")
