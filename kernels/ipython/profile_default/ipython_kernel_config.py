"""IPython kernel settings for sandboxes: nothing written to the (read-only) profile directory."""

c = get_config()  # noqa: F821  (provided by IPython when it loads this file)

# The profile directory is read-only inside a container; keep history in memory only.
c.HistoryManager.enabled = False
# Plots render inline as PNG without asking; the sandbox may add SVG (see startup files).
c.InlineBackend.figure_formats = {"png"}
