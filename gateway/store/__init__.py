"""Durable records of sandboxes, executions and API keys."""
