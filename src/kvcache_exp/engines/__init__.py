"""Engines: what the trial protocol talks to (llama-cpp-python in-process, or a server)."""
