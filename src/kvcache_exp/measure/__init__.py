"""Measurement: prompts of exact token counts, the timed trial protocol, experiments."""
