"""Tables for sandboxes: pandas DataFrames and Series also display as ``application/json``.

A chat app can chart ``{"columns", "index", "rows", "dtypes", "row_count", "truncated"}``
without parsing HTML. At most ``CODE_GATEWAY_TABLE_ROWS`` rows (default 1000) are included;
``truncated`` says when there were more (``row_count`` is the full count). Values become JSON
as pandas' ``to_json`` makes them: NaN and None are null, timestamps ISO 8601 strings.

pandas is not imported here: the formatter is registered by name and runs only for pandas
objects, which exist only once user code imported pandas.
"""


def _code_gateway_tables() -> None:
    import json
    import os

    from IPython import get_ipython

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

    formatter = ip.display_formatter.formatters["application/json"]
    # pandas >= 3 reports its public classes' module as "pandas"; older ones the defining module.
    for module in ("pandas", "pandas.core.frame"):
        formatter.for_type_by_name(module, "DataFrame", frame_json)
    for module in ("pandas", "pandas.core.series"):
        formatter.for_type_by_name(module, "Series", series_json)


_code_gateway_tables()
del _code_gateway_tables
