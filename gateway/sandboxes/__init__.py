"""Sandboxes: the record, its limits, and the manager that owns their lifecycle."""
