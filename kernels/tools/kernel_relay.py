"""Runs a kernel that speaks only TCP (Deno's) behind the ipc sockets the gateway connects to.

    python3 -I kernel_relay.py IPC_CONNECTION_FILE TCP_CONNECTION_FILE -- KERNEL ARGV...

Sandboxes have no network, and the gateway reaches every kernel through ipc sockets in the
sandbox's socket directory. This reads the kernel's ipc connection file, writes a TCP one for
the same key (free ports on 127.0.0.1, inside the sandbox), starts the kernel (whose argv names
that file), and relays every connection to an ipc socket (``<ip>-<port>``) byte for
byte to the kernel's TCP port: ZMQ speaks the same ZMTP over both transports. It passes SIGINT and
SIGTERM on to the kernel and exits with it; the kernel dies with it (``PR_SET_PDEATHSIG``). Standard library only; run with ``python3 -I``.
"""

import asyncio
import json
import os
import signal
import socket
import sys

CHANNELS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
CHUNK = 1 << 16


def die_with_parent():
    """In the kernel's process: be killed when the relay dies, whatever kills it."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def relay_to(port):
    async def handle(reader, writer):
        try:
            kernel_reader, kernel_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:  # the kernel does not listen yet: ZMQ connects again by itself
            writer.close()
            return
        await asyncio.gather(pipe(reader, kernel_writer), pipe(kernel_reader, writer))
    return handle


async def main(ipc_file, tcp_file, argv):
    with open(ipc_file) as source:
        ipc = json.load(source)
    tcp = dict(ipc, transport="tcp", ip="127.0.0.1")
    tcp.update({channel: free_port() for channel in CHANNELS})
    with open(tcp_file, "w") as target:
        json.dump(tcp, target)
    servers = []
    for channel in CHANNELS:
        path = "%s-%s" % (ipc["ip"], ipc[channel])
        if os.path.exists(path):
            os.unlink(path)
        servers.append(await asyncio.start_unix_server(relay_to(tcp[channel]), path=path))
    kernel = await asyncio.create_subprocess_exec(*argv, preexec_fn=die_with_parent)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, kernel.send_signal, signum)
    code = await kernel.wait()
    for server in servers:
        server.close()
    return code


if __name__ == "__main__":
    if len(sys.argv) < 5 or sys.argv[3] != "--":
        sys.exit("usage: kernel_relay.py IPC_CONNECTION_FILE TCP_CONNECTION_FILE -- KERNEL ARGV...")
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[4:])))
