"""Generated: the filesystem service (see ../__init__.py)."""
