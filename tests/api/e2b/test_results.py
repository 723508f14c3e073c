"""Our output events as the code interpreter's lines: the mapping itself, without a kernel."""

from __future__ import annotations

from gateway.api.e2b.results import E2BLines, columns_of, result_line


def test_formats_become_fields_and_the_rest_extra() -> None:
    line = result_line({"text/plain": "'quoted'", "image/png": "iVBOR", "application/x-custom": {"a": 1}}, main=True)
    assert line == {"type": "result", "is_main_result": True, "text": "quoted", "png": "iVBOR",
                    "extra": {"application/x-custom": {"a": 1}}}


def test_our_table_is_e2b_data() -> None:
    table = {"columns": ["n", "s"], "index": [0, 1], "rows": [[1, "a"], [2, None]], "dtypes": ["int64", "object"]}
    assert columns_of(table) == {"n": [1, 2], "s": ["a", None]}
    line = result_line({"text/plain": "df", "application/vnd.code-gateway.table+json": table}, main=False)
    assert line["data"] == {"n": [1, 2], "s": ["a", None]} and "extra" not in line


def test_an_error_is_told_once_and_the_end_counts() -> None:
    lines = E2BLines()
    error = {"output_type": "error", "ename": "E", "evalue": "v", "traceback": ["a", "b"]}
    assert lines.of({"type": "output", "output": error}) == [
        {"type": "error", "name": "E", "value": "v", "traceback": "a\nb"}]
    assert lines.of({"type": "update_display", "display_id": "d", "output": {}}) == []
    final = {"error": {"ename": "E", "evalue": "v", "traceback": ["a", "b"]}, "execution_count": 7}
    assert lines.of({"type": "execution", "execution": final}) == [
        {"type": "number_of_executions", "execution_count": 7}, {"type": "end_of_execution"}]


def test_an_error_without_output_is_told_at_the_end() -> None:
    final = {"error": {"ename": "TimeoutError", "evalue": "took too long", "traceback": []}, "execution_count": None}
    assert E2BLines().of({"type": "execution", "execution": final}) == [
        {"type": "error", "name": "TimeoutError", "value": "took too long", "traceback": ""},
        {"type": "end_of_execution"}]
