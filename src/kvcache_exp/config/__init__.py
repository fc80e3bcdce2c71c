"""The configuration: its schema (the single source of defaults) and each experiment's settings."""
