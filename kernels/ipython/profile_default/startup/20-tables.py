"""Tables for sandboxes: pandas DataFrames and Series also display as ``application/vnd.code-gateway.table+json``.

A chat app can chart ``{"columns", "index", "rows", "dtypes", "row_count", "truncated"}``
without parsing HTML. At most ``CODE_GATEWAY_TABLE_ROWS`` rows (default 1000) are included;
``truncated`` says when there were more (``row_count`` is the full count). Values become JSON
as pandas' ``to_json`` makes them: NaN and None are null, timestamps ISO 8601 strings.

The MIME type is our own (a vendor type), not ``application/json``: notebook front ends pick the
richest type they know, and JupyterLab ranks ``application/json`` above ``text/html`` (it would
show a JSON tree instead of the table). They have no renderer for a vendor type and ignore it, so
a DataFrame looks exactly as with a local kernel.

pandas is not imported here: the formatter is registered by name and runs only for pandas
objects, which exist only once user code imported pandas.
"""


def _code_gateway_tables() -> None:
    import json
    import os

    from IPython import get_ipython
    from IPython.core.formatters import JSONFormatter

    ip = get_ipython()
    if ip is None:
        return
    try:
        max_rows = max(0, int(os.environ.pop("CODE_GATEWAY_TABLE_ROWS", "1000")))
    except ValueError:
        max_rows = 1000

    def frame_json(frame):  # type: ignore[no-untyped-def]
        try:
            shown = frame.head(max_rows)
            split = json.loads(shown.to_json(orient="split", date_format="iso", default_handler=str))
        except Exception:  # a frame pandas cannot serialise: the other formats still show it
            return None
        return {
            "columns": split.get("columns", []),
            "index": split.get("index", []),
            "rows": split.get("data", []),
            "dtypes": [str(dtype) for dtype in shown.dtypes],
            "row_count": int(len(frame)),
            "truncated": len(frame) > len(shown),
        }

    def series_json(series):  # type: ignore[no-untyped-def]
        name = series.name if series.name is not None else 0
        return frame_json(series.to_frame(name=name))

    mime = "application/vnd.code-gateway.table+json"
    # A JSON formatter of its own: same checks as IPython's, but only for the types registered
    # below (no object's ``_repr_json_`` ends up under this MIME type).
    formatter = JSONFormatter(parent=ip.display_formatter, format_type=mime,
                              print_method="_repr_code_gateway_table_")
    ip.display_formatter.formatters[mime] = formatter
    # pandas >= 3 reports its public classes' module as "pandas"; older ones the defining module.
    for module in ("pandas", "pandas.core.frame"):
        formatter.for_type_by_name(module, "DataFrame", frame_json)
    for module in ("pandas", "pandas.core.series"):
        formatter.for_type_by_name(module, "Series", series_json)


_code_gateway_tables()
del _code_gateway_tables
