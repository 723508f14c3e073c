"""Plots for sandboxes: the figure formats the sandbox asked for, and one output per figure.

- ``CODE_GATEWAY_FIGURE_FORMATS`` (set by the gateway from the sandbox's ``figure_formats``,
  e.g. ``png,svg``) chooses the MIME types of inline figures; PNG alone by default. The variable
  is removed from ``os.environ``, so user code sees only its own environment.
- A figure returned as a cell's last expression becomes that cell's ``execute_result`` and is
  closed, so the inline backend does not display it a second time at the end of the cell: for
  the gateway's own API. A request relayed from a Jupyter client (the gateway marks its metadata
  ``code_gateway_client: jupyter``) gets what a stock kernel sends, the figure twice, so a
  notebook looks exactly as with a local kernel.

Nothing here imports matplotlib: a kernel that never plots never pays for it.
"""


def _code_gateway_figures() -> None:
    import os
    import sys

    from IPython import get_ipython

    ip = get_ipython()
    if ip is None:
        return

    known = ("png", "retina", "jpeg", "svg", "pdf")
    requested = os.environ.pop("CODE_GATEWAY_FIGURE_FORMATS", "")
    formats = {f.strip().lower() for f in requested.split(",") if f.strip().lower() in known}
    if formats:
        # Read by matplotlib_inline's InlineBackend when the first figure is made.
        ip.config.InlineBackend.figure_formats = formats

    displayhook = ip.displayhook
    compute_format_data = displayhook.compute_format_data
    kernel = getattr(ip, "kernel", None)

    def from_jupyter_client() -> bool:
        parent = kernel.get_parent("shell") if hasattr(kernel, "get_parent") else {}
        return (parent.get("metadata") or {}).get("code_gateway_client") == "jupyter"

    def compute_result_format_data(result):  # type: ignore[no-untyped-def]
        data = compute_format_data(result)
        figure_module = sys.modules.get("matplotlib.figure")
        if figure_module is not None and isinstance(result, figure_module.Figure) and not from_jupyter_client():
            pyplot = sys.modules.get("matplotlib.pyplot")
            if pyplot is not None:
                pyplot.close(result)  # already shown as the result: not again by flush_figures
        return data

    displayhook.compute_format_data = compute_result_format_data


_code_gateway_figures()
del _code_gateway_figures
