"""``code-gateway-client``: the SDK on the command line.

    code-gateway-client run -c 'print(1 + 1)'            # a fresh sandbox, deleted afterwards
    code-gateway-client run analysis.py --sandbox ID     # images and tables saved, their paths printed
    code-gateway-client sandboxes ls | sandboxes rm ID...
    code-gateway-client files put ID data.csv [in/data.csv] | files get ID out.png [local.png] | files ls ID [dir]
    code-gateway-client notebook ID > history.ipynb
    code-gateway-client mcp                              # an MCP server over stdio (needs the `mcp` extra)

The gateway and key come from ``--url``/``--api-key`` or ``CODE_GATEWAY_URL``/``CODE_GATEWAY_API_KEY``.
Exit status: 0, or 1 when the code did not complete or the gateway refused (the error on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from code_gateway_client import __version__
from code_gateway_client.errors import GatewayError
from code_gateway_client.models import Execution, images_in, table_in
from code_gateway_client.sync import Gateway, Sandbox
from code_gateway_client.tools import strip_ansi


class ProgressBar:
    """``on_progress`` drawing one line on stderr: a bar when the size is known, else a byte count."""

    WIDTH = 30

    def __init__(self, label: str, stream: IO[str], enabled: bool) -> None:
        self.label, self.stream, self.enabled = label, stream, enabled
        self.drawn = False

    def __call__(self, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        if total:
            filled = self.WIDTH * done // total
            line = f"{self.label} [{'#' * filled}{'-' * (self.WIDTH - filled)}] {100 * done // total:3d}% "
            line += f"{mebibytes(done)}/{mebibytes(total)}"
        else:
            line = f"{self.label} {mebibytes(done)}"
        self.stream.write("\r" + line)
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def mebibytes(count: int) -> str:
    return f"{count / (1 << 20):.1f} MiB"


class RunPrinter:
    """The callbacks of ``run``: streams as they come, each image and table saved to a file, path printed."""

    def __init__(self, out_dir: Path, colour: bool) -> None:
        self.out_dir = out_dir
        self.colour = colour
        self.saved = 0

    def stdout(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def stderr(self, text: str) -> None:
        sys.stderr.write(text)
        sys.stderr.flush()

    def output(self, output: dict[str, Any]) -> None:
        data = output.get("data") or {}
        for image in images_in(data):
            self.announce("image", self.next_path(image.suffix), image.data)
        table = table_in(data)
        if table is not None:
            self.announce("table", self.next_path(".csv"), table.to_csv().encode())
        if output.get("output_type") == "execute_result" and "text/plain" in data:
            self.stdout(str(data["text/plain"]).rstrip("\n") + "\n")
        if output.get("output_type") == "error":
            traceback = "\n".join(output.get("traceback") or [])
            self.stderr((traceback if self.colour else strip_ansi(traceback)) + "\n")

    def next_path(self, suffix: str) -> Path:
        """``output-N.suffix``, N counting on past any file already there (earlier runs are kept)."""
        while True:
            self.saved += 1
            path = self.out_dir / f"output-{self.saved}{suffix}"
            if not path.exists():
                return path

    def announce(self, kind: str, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.stdout(f"[{kind} saved: {path}]\n")


def run_command(gateway: Gateway, args: argparse.Namespace) -> int:
    if args.code is not None:
        code = args.code
    elif args.file in (None, "-"):
        code = sys.stdin.read()
    else:
        code = Path(args.file).read_text()
    printer = RunPrinter(Path(args.out_dir), colour=sys.stderr.isatty())
    sandbox = gateway.sandbox(args.sandbox) if args.sandbox else gateway.create_sandbox()
    try:
        execution = sandbox.run(code, timeout=args.timeout, on_stdout=printer.stdout, on_stderr=printer.stderr,
                                on_output=printer.output)
    finally:
        if args.sandbox is None and not args.keep:
            sandbox.delete()
        elif args.sandbox is None:
            print(f"[sandbox kept: {sandbox.id}]", file=sys.stderr)
    return report(execution)


def report(execution: Execution) -> int:
    if execution.ok:
        return 0
    if execution.error is not None and execution.error.code != "exception":
        print(f"error: execution {execution.status} ({execution.error.code}): {execution.error.evalue}", file=sys.stderr)
    elif execution.error is None:
        print(f"error: execution {execution.status}", file=sys.stderr)
    return 1


def sandboxes_command(gateway: Gateway, args: argparse.Namespace) -> int:
    if args.action == "rm":
        for sandbox_id in args.ids:
            gateway.sandbox(sandbox_id).delete()
            print(sandbox_id)
        return 0
    listed = gateway.sandboxes(status=args.status)
    if args.json:
        print(json.dumps([s.info.raw for s in listed], indent=2))
        return 0
    for sandbox in listed:
        info = sandbox.info
        print(f"{info.id}  {info.status:<11} {info.created_at or '':<27} {info.execution_count:>5} runs  "
              f"{json.dumps(info.metadata) if info.metadata else ''}".rstrip())
    return 0


def files_command(gateway: Gateway, args: argparse.Namespace) -> int:
    sandbox: Sandbox = gateway.sandbox(args.sandbox)
    progress_enabled = args.progress if args.progress is not None else sys.stderr.isatty()
    if args.action == "ls":
        for entry in sandbox.files.list(args.path or ""):
            print(f"{entry.type[0]} {entry.size:>12} {entry.modified or '':<27} {entry.path}")
        return 0
    if args.action == "put":
        remote = args.remote or os.path.basename(args.local)
        bar = ProgressBar(f"put {remote}", sys.stderr, progress_enabled)
        try:
            entry = sandbox.files.upload(remote, args.local if args.local != "-" else sys.stdin.buffer,
                                         on_progress=bar)
        finally:
            bar.close()
        print(f"{entry.path} {entry.size}")
        return 0
    local = args.local or os.path.basename(args.remote)
    bar = ProgressBar(f"get {args.remote}", sys.stderr, progress_enabled and local != "-")
    try:
        size = sandbox.files.download(args.remote, sys.stdout.buffer if local == "-" else local, on_progress=bar)
    finally:
        bar.close()
    if local != "-":
        print(f"{local} {size}")
    return 0


def notebook_command(gateway: Gateway, args: argparse.Namespace) -> int:
    notebook = gateway.sandbox(args.sandbox).notebook()
    json.dump(notebook, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


def mcp_command(args: argparse.Namespace) -> int:
    try:
        from code_gateway_client.mcp_server import serve
    except ImportError as error:
        print(f"error: `code-gateway-client mcp` needs the MCP SDK: pip install 'code-gateway-client[mcp]' ({error})",
              file=sys.stderr)
        return 1
    serve(args.url, args.api_key, sandbox_id=args.sandbox)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="code-gateway-client", description="Run code in Code Interpreter Gateway.")
    top.add_argument("--url", help="the gateway (default: $CODE_GATEWAY_URL or http://127.0.0.1:8888)")
    top.add_argument("--api-key", help="the API key (default: $CODE_GATEWAY_API_KEY)")
    top.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = top.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run code, streaming its output")
    source = run.add_mutually_exclusive_group()
    source.add_argument("-c", dest="code", help="the code to run")
    source.add_argument("file", nargs="?", help="a file of code ('-': standard input)")
    run.add_argument("--sandbox", help="run in this sandbox (default: a new one, deleted afterwards)")
    run.add_argument("--keep", action="store_true", help="keep the new sandbox (its id is printed)")
    run.add_argument("--timeout", type=float, help="seconds before the code is interrupted")
    run.add_argument("--out-dir", default=".", help="where images and tables are saved (default: .)")

    sandboxes = commands.add_parser("sandboxes", help="list or delete sandboxes")
    sandbox_actions = sandboxes.add_subparsers(dest="action", required=True)
    ls = sandbox_actions.add_parser("ls", help="your sandboxes")
    ls.add_argument("--status", help="only those with this status (e.g. running)")
    ls.add_argument("--json", action="store_true", help="the records as JSON")
    rm = sandbox_actions.add_parser("rm", help="delete sandboxes")
    rm.add_argument("ids", nargs="+", metavar="SANDBOX")

    files = commands.add_parser("files", help="files in a sandbox's working directory")
    files.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="draw progress bars (default: when stderr is a terminal)")
    file_actions = files.add_subparsers(dest="action", required=True)
    put = file_actions.add_parser("put", help="upload a file")
    put.add_argument("sandbox")
    put.add_argument("local", help="local file ('-': standard input)")
    put.add_argument("remote", nargs="?", help="path in the sandbox (default: the local name)")
    get = file_actions.add_parser("get", help="download a file")
    get.add_argument("sandbox")
    get.add_argument("remote", help="path in the sandbox")
    get.add_argument("local", nargs="?", help="local file (default: the remote name; '-': standard output)")
    list_files = file_actions.add_parser("ls", help="list a directory")
    list_files.add_argument("sandbox")
    list_files.add_argument("path", nargs="?")

    notebook = commands.add_parser("notebook", help="a sandbox's history as .ipynb on standard output")
    notebook.add_argument("sandbox")

    mcp = commands.add_parser("mcp", help="serve the sandbox tools over MCP on stdio")
    mcp.add_argument("--sandbox", help="use this sandbox (default: one made for the session, deleted at its end)")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "mcp":
        return mcp_command(args)
    try:
        with Gateway(args.url, args.api_key) as gateway:
            command = {"run": run_command, "sandboxes": sandboxes_command, "files": files_command,
                       "notebook": notebook_command}[args.command]
            return command(gateway, args)
    except GatewayError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
