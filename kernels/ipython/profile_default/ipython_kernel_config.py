"""IPython kernel settings for sandboxes: nothing written to the (read-only) profile directory."""

c = get_config()  # noqa: F821  (provided by IPython when it loads this file)

# The profile directory is read-only inside a container: history lives in an in-memory SQLite
# database for the kernel's lifetime, so `%history`, `_i1`/`In` and `history_request` work as
# with a local kernel, and nothing is written to disk.
c.HistoryManager.hist_file = ":memory:"
# Plots render inline as PNG without asking; the sandbox may add SVG (see startup files).
c.InlineBackend.figure_formats = {"png"}
