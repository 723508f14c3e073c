"""Rich outputs from real kernels on both provisioners: plots, tables, everything IPython displays,
and outputs too large to keep — what chat apps and notebook front ends render."""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from typing import Any
from xml.etree import ElementTree

import httpx

from tests.pngs import png_size
from tests.provisioned import alice, create, each_gateway, run  # noqa: F401

#: Our machine-readable table: a vendor type, which notebook front ends do not render (they show the HTML).
TABLE = "application/vnd.code-gateway.table+json"


class TableParser(HTMLParser):
    """The header cells and body rows of the first <table>."""

    def __init__(self) -> None:
        super().__init__()
        self.tables = 0
        self.section = ""
        self.headers: list[str] = []
        self.rows: list[list[str]] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "table":
            self.tables += 1
        elif tag in ("thead", "tbody"):
            self.section = tag
        elif tag == "tr" and self.section == "tbody":
            self.rows.append([])
        elif tag in ("th", "td"):
            self._cell = []

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("th", "td") and self._cell is not None:
            text = "".join(self._cell).strip()
            if self.section == "thead":
                self.headers.append(text)
            else:
                self.rows[-1].append(text)
            self._cell = None


def parse_table(html: str) -> TableParser:
    parser = TableParser()
    parser.feed(html)
    return parser


async def test_plot_show_gives_one_png_display_without_warnings(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    execution = await run(alice, sandbox["id"], "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()")
    assert execution["status"] == "completed"
    assert execution["stderr"] == ""  # no backend warning, no font-cache chatter
    assert len(execution["outputs"]) == 1
    output = execution["outputs"][0]
    assert output["output_type"] == "display_data"
    assert set(output["data"]) == {"image/png", "text/plain"}
    assert output["data"]["text/plain"].startswith("<Figure size 640x480")
    width, height = png_size(output["data"]["image/png"])  # cropped to the drawing ("tight" bbox)
    assert 500 <= width <= 640 and 380 <= height <= 480
    assert len(base64.b64decode(output["data"]["image/png"])) > 5000


async def test_figure_as_last_expression_is_the_result_once(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    code = "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(3, 2), dpi=100)\nax.bar([1, 2], [3, 4])\nfig"
    execution = await run(alice, sandbox["id"], code)
    assert execution["stderr"] == ""
    assert [o["output_type"] for o in execution["outputs"]] == ["execute_result"]  # not shown a second time
    width, height = png_size(execution["result"]["image/png"])
    assert 250 <= width <= 300 and 170 <= height <= 200
    assert execution["result"]["text/plain"].startswith("<Figure size 300x200")
    # Without plt.show(), a plot is still displayed at the end of the execution.
    implicit = await run(alice, sandbox["id"], "plt.plot([1, 0])")
    assert [o["output_type"] for o in implicit["outputs"]] == ["execute_result", "display_data"]
    assert "image/png" in implicit["outputs"][1]["data"]


async def test_several_figures_come_in_order(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    code = (
        "import matplotlib.pyplot as plt\n"
        "for width in (2, 3, 4):\n"
        "    plt.figure(figsize=(width, 1), dpi=100)\n"
        "    plt.plot([0, width])\n"
        "    plt.show()\n"
        "print('between')\n"
        "plt.figure(figsize=(5, 1), dpi=100); plt.plot([1])\n"
        "plt.figure(figsize=(6, 1), dpi=100); plt.plot([1]);\n"
    )
    execution = await run(alice, sandbox["id"], code)
    kinds = [o["output_type"] for o in execution["outputs"]]
    assert kinds == ["display_data"] * 3 + ["stream"] + ["display_data"] * 2
    widths = [png_size(o["data"]["image/png"])[0] for o in execution["outputs"] if o["output_type"] == "display_data"]
    for width, expected in zip(widths, [200, 300, 400, 500, 600], strict=True):
        assert expected * 0.8 <= width <= expected, widths


async def test_svg_figures_when_the_sandbox_asks(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice, figure_formats=["png", "svg"])
    assert sandbox["figure_formats"] == ["png", "svg"]
    execution = await run(alice, sandbox["id"], "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()")
    data = execution["outputs"][0]["data"]
    assert set(data) == {"image/png", "image/svg+xml", "text/plain"}
    png_size(data["image/png"])
    svg = ElementTree.fromstring(data["image/svg+xml"])
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    # The gateway's setting is not left in the code's environment.
    env = await run(alice, sandbox["id"], "import os; sorted(k for k in os.environ if 'CODE_GATEWAY' in k)")
    assert env["result"]["text/plain"] == "[]"
    svg_only = await create(alice, figure_formats=["svg"])
    only = await run(alice, svg_only["id"], "import matplotlib.pyplot as plt\nplt.plot([1])\nplt.show()")
    assert set(only["outputs"][0]["data"]) == {"image/svg+xml", "text/plain"}
    assert (await create(alice))["figure_formats"] == ["png"]
    bad = await alice.post("/api/v1/sandboxes", json={"figure_formats": ["gif"]})
    assert bad.status_code == 400 and "figure_formats" in bad.json()["error"]["message"]


async def test_retina_jpeg_and_pdf_figures(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice, figure_formats=["retina", "jpeg", "pdf"])
    assert sandbox["figure_formats"] == ["retina", "jpeg", "pdf"]
    code = "import matplotlib.pyplot as plt\nplt.figure(figsize=(3, 2), dpi=100)\nplt.plot([1, 3, 2])\nplt.show()"
    execution = await run(alice, sandbox["id"], code)
    assert execution["status"] == "completed" and execution["stderr"] == "", execution
    [output] = execution["outputs"]
    data = output["data"]
    assert set(data) == {"image/png", "image/jpeg", "application/pdf", "text/plain"}
    # retina: a PNG of twice the pixels, shown at the figure's size.
    width, height = png_size(data["image/png"])
    shown = output["metadata"]["image/png"]
    assert (width // 2, height // 2) == (shown["width"], shown["height"])
    assert 250 <= shown["width"] <= 300 and 170 <= shown["height"] <= 200
    jpeg = base64.b64decode(data["image/jpeg"])
    assert jpeg.startswith(b"\xff\xd8\xff") and jpeg.endswith(b"\xff\xd9")
    pdf = base64.b64decode(data["application/pdf"])
    assert pdf.startswith(b"%PDF-") and b"%%EOF" in pdf[-32:]


async def test_dataframe_html_text_and_table_json(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    code = (
        "import pandas as pd, numpy as np\n"
        "df = pd.DataFrame({'city': ['Oslo', 'Lima', None], 'temp': [3.5, 19.0, np.nan],\n"
        "                   'day': pd.to_datetime(['2024-01-01', '2024-01-02', '2024-01-03'])})\n"
        "df"
    )
    execution = await run(alice, sandbox["id"], code)
    result = execution["result"]
    assert set(result) == {"text/plain", "text/html", TABLE}  # no application/json: JupyterLab would prefer it
    assert "Oslo" in result["text/plain"]
    table = parse_table(result["text/html"])
    assert table.tables == 1
    assert table.headers == ["", "city", "temp", "day"]
    assert table.rows[0] == ["0", "Oslo", "3.5", "2024-01-01"]
    assert len(table.rows) == 3
    payload = result[TABLE]
    assert payload["columns"] == ["city", "temp", "day"]
    assert payload["index"] == [0, 1, 2]
    assert payload["rows"][0][:2] == ["Oslo", 3.5] and payload["rows"][0][2].startswith("2024-01-01T00:00:00")
    assert payload["rows"][2][:2] == [None, None]  # missing values are null
    assert payload["row_count"] == 3 and payload["truncated"] is False
    assert len(payload["dtypes"]) == 3

    series = await run(alice, sandbox["id"], "df['temp']")
    assert series["result"][TABLE]["columns"] == ["temp"]

    big = await run(alice, sandbox["id"], "pd.DataFrame({'n': range(5000), 'sq': [i * i for i in range(5000)]})")
    payload = big["result"][TABLE]
    assert payload["truncated"] is True and payload["row_count"] == 5000
    assert len(payload["rows"]) == 1000 and payload["rows"][999] == [999, 998001]
    assert len(parse_table(big["result"]["text/html"]).rows) < 100  # pandas shortens the HTML itself


async def test_startup_stays_light_and_leaves_no_names(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    code = "import sys; print(sorted(m for m in ('pandas', 'matplotlib', 'numpy') if m in sys.modules), " \
           "[k for k in globals() if 'code_gateway' in k.lower()])"
    assert (await run(alice, sandbox["id"], code))["stdout"] == "[] []\n"


async def test_everything_ipython_displays_comes_through(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    png = base64.b64decode(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    )
    code = (
        "from IPython.display import display, HTML, Markdown, JSON, Image, SVG, Latex, Javascript\n"
        "display(HTML('<i>html</i>'))\n"
        "display(Markdown('**md**'))\n"
        "display(JSON({'a': [1, 2]}))\n"
        f"display(Image(data={png!r}))\n"
        "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"4\" height=\"4\"></svg>'))\n"
        "display(Latex(r'$\\alpha$'))\n"
        "display({'text/plain': 'raw bundle', 'text/csv': 'a,b'}, raw=True)\n"
        "display('one', 'two')\n"
    )
    execution = await run(alice, sandbox["id"], code)
    assert execution["status"] == "completed", execution["error"]
    data = [o["data"] for o in execution["outputs"]]
    assert all(o["output_type"] == "display_data" for o in execution["outputs"])
    assert data[0]["text/html"] == "<i>html</i>"
    assert data[1]["text/markdown"] == "**md**"
    assert data[2]["application/json"] == {"a": [1, 2]}
    assert base64.b64decode(data[3]["image/png"]) == png
    assert data[4]["image/svg+xml"].startswith("<svg")
    assert data[5]["text/latex"] == "$\\alpha$"
    assert data[6] == {"text/plain": "raw bundle", "text/csv": "a,b"}
    assert [d["text/plain"] for d in data[7:]] == ["'one'", "'two'"]


async def test_update_display_and_clear_output_apply_to_the_stored_execution(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    code = (
        "from IPython.display import display, update_display, clear_output\n"
        "h = display('step 0', display_id='progress')\n"
        "print('working')\n"
        "for i in range(1, 4):\n"
        "    update_display(f'step {i}', display_id='progress')\n"
        "other = display('other', display_id=True)\n"
        "other.update('other, updated')\n"
    )
    execution = await run(alice, sandbox["id"], code)
    texts = [o.get("data", {}).get("text/plain", o.get("text")) for o in execution["outputs"]]
    assert texts == ["'step 3'", "working\n", "'other, updated'"]
    stored = (await alice.get(f"/api/v1/executions/{execution['id']}")).json()
    assert stored["outputs"] == execution["outputs"]

    cleared = await run(alice, sandbox["id"], "print('gone')\nclear_output()\nprint('kept')")
    assert cleared["outputs"] == [{"output_type": "stream", "name": "stdout", "text": "kept\n"}]
    waited = await run(alice, sandbox["id"], "print('old')\nclear_output(wait=True)\ndisplay('new')")
    assert [o["output_type"] for o in waited["outputs"]] == ["display_data"]


async def test_outputs_over_the_cap_become_a_note(alice: httpx.AsyncClient) -> None:
    sandbox = await create(alice)
    html = await run(alice, sandbox["id"],
                     "from IPython.display import HTML, Image, display\n"
                     "display(HTML('<p>' + 'x' * (6 * 1024 * 1024) + '</p>'))\nprint('after')")
    assert html["status"] == "completed"
    assert html["truncated"] is True
    note = html["outputs"][0]
    assert note["output_type"] == "display_data"
    assert set(note["data"]) == {"text/plain"}
    assert "truncated" in note["data"]["text/plain"] and "6.0 MiB" in note["data"]["text/plain"]
    assert note["metadata"]["truncated"]["original_bytes"] >= 6 * 1024 * 1024
    assert html["stdout"] == "after\n"

    code = (  # a real PNG of 2000x2000 noise pixels: ~12 MB, incompressible
        "import io, numpy as np, matplotlib.pyplot as plt\n"
        "buffer = io.BytesIO()\n"
        "plt.imsave(buffer, np.random.default_rng(0).random((2000, 2000, 3)), format='png')\n"
        "print(buffer.getvalue()[:8] == b'\\x89PNG\\r\\n\\x1a\\n', buffer.tell() > 6 * 2 ** 20)\n"
        "display(Image(data=buffer.getvalue()))\n"
        "'still here'"
    )
    huge_png = await run(alice, sandbox["id"], code, timeout=120)
    assert huge_png["status"] == "completed", huge_png["error"]
    assert huge_png["stdout"] == "True True\n"
    assert huge_png["truncated"] is True
    image = huge_png["outputs"][1]
    assert image["output_type"] == "display_data" and set(image["data"]) == {"text/plain"}
    assert "per-output limit" in image["data"]["text/plain"]
    assert huge_png["result"]["text/plain"] == "'still here'"

    # The notebook of it stays valid, and the sandbox keeps working.
    import nbformat

    notebook = nbformat.reads((await alice.get(f"/api/v1/sandboxes/{sandbox['id']}/notebook")).text, as_version=4)
    nbformat.validate(notebook)
    assert notebook.cells[0].metadata.code_gateway.truncated is True
    assert (await run(alice, sandbox["id"], "1 + 1"))["result"]["text/plain"] == "2"
