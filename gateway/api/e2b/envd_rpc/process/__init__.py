"""Generated: the process service (see ../__init__.py)."""
