"""KV-cache prefix invalidation experiment: what removing context from a conversation
costs a language model when the cached prefix no longer matches."""

__version__ = "0.1.0"
