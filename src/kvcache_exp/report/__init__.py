"""Reporting: the summary document, the figures and the report's HTML pages."""
