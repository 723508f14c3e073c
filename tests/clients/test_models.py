"""Typed results read both forms of the DataFrame table (the vendor type, and older gateways' application/json)."""

from __future__ import annotations

import base64

import pandas

from code_gateway_client import Execution

TABLE = {"columns": ["a"], "index": [0, 1], "rows": [[1], [2]], "dtypes": ["int64"], "row_count": 2,
         "truncated": False}


def execution(*bundles: dict[str, object]) -> Execution:
    outputs = [{"output_type": "display_data", "data": data, "metadata": {}} for data in bundles]
    return Execution.from_json({"id": "e", "sandbox_id": "s", "status": "completed", "outputs": outputs})


def test_tables_from_the_vendor_type_and_from_plain_json() -> None:
    found = execution({"application/vnd.code-gateway.table+json": TABLE, "text/html": "<table/>"},
                      {"application/json": TABLE},
                      {"application/json": {"not": "a table"}}).tables()
    assert len(found) == 2
    assert all(t.rows == [[1], [2]] and t.row_count == 2 for t in found)
    pandas.testing.assert_frame_equal(found[0].to_pandas(), pandas.DataFrame({"a": [1, 2]}))


def test_images_decoded_in_order() -> None:
    png = base64.b64encode(b"\x89PNG\r\n\x1a\nrest").decode()
    images = execution({"image/png": png, "text/plain": "<Figure>"}, {"image/svg+xml": "<svg/>"}).images()
    assert [(i.mime, i.data[:4]) for i in images] == [("image/png", b"\x89PNG"), ("image/svg+xml", b"<svg")]
