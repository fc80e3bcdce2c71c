"""Analysis: reading results back, statistics, per-configuration tables and verdicts."""
