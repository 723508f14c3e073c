"""Benchmarks against raw jupyter_client and Jupyter Kernel Gateway, run on demand: ``make bench``."""
