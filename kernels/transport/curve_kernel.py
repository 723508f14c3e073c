"""An IPython kernel whose every socket is a CurveZMQ server: the gateway's ``tcp`` transport.

    python3 -c "<this file's text>" -f /run/code-gateway/connection.json

The gateway sends this file's text itself (as it does for ``tools/``), so the image needs nothing
beyond ipykernel. The connection file holds, beside Jupyter's usual fields, the kernel's CurveZMQ
keypair as jupyter_client writes it (``curve_publickey``, ``curve_secretkey``, Z85). Each socket
the kernel binds (shell, stdin, control, iopub and the heartbeat) becomes a CURVE server with it
before it binds: a peer completes a handshake only if it knows the kernel's public key, and all
traffic is encrypted. ipykernel 7.3 and later do this themselves; the image's (Debian's 6.17) does
not, so this works with both. Without keys the kernel refuses to start: a kernel on TCP never
listens in plain text.
"""

import json
import sys

# As ipykernel_launcher does: the working directory is the sandbox's, never a place to import from.
if sys.path and sys.path[0] == "":
    del sys.path[0]

# The sandbox image imports ipykernel lean, as its ipykernel_launcher does (kernels/launcher/);
# another image's ipykernel starts as it is.
try:
    import code_gateway_lean  # noqa: E402
except ImportError:
    pass
else:
    code_gateway_lean.kernel_app_class()

import zmq  # noqa: E402
from ipykernel.heartbeat import Heartbeat  # noqa: E402
from ipykernel.kernelapp import IPKernelApp  # noqa: E402


def make_server(socket, keys):
    """Make ``socket`` a CURVE server with the kernel's ``(public, secret)`` keypair (before it binds)."""
    socket.curve_publickey, socket.curve_secretkey = keys
    socket.curve_server = True


def make_client(socket, keys):
    """Make ``socket`` a CURVE client of the kernel's own sockets (before it connects)."""
    socket.curve_publickey, socket.curve_secretkey = keys
    socket.curve_serverkey = keys[0]


class CurveHeartbeat(Heartbeat):
    keys = (b"", b"")

    def _try_bind_socket(self):
        make_server(self.socket, self.keys)
        return super()._try_bind_socket()


class CurveKernelApp(IPKernelApp):
    curve_keys = (b"", b"")

    def load_connection_file(self, *args, **kwargs):
        super().load_connection_file(*args, **kwargs)
        with open(self.abs_connection_file) as file:
            info = json.load(file)
        try:
            self.curve_keys = (info["curve_publickey"].encode("ascii"), info["curve_secretkey"].encode("ascii"))
        except (KeyError, AttributeError):
            sys.exit("curve_kernel: the connection file has no curve_publickey/curve_secretkey: not listening")

    def _bind_socket(self, s, port):
        if not self.curve_keys[1]:
            sys.exit("curve_kernel: no CurveZMQ keys: not listening")
        make_server(s, self.curve_keys)
        return super()._bind_socket(s, port)

    def init_control(self, context):
        super().init_control(context)
        # The debugger's in-kernel client of the shell socket: connected in plain text by
        # IPKernelApp, it would fail its handshake (and retry) forever. Connect it again as a client.
        endpoint = self.shell_socket.getsockopt(zmq.LAST_ENDPOINT)
        if endpoint:
            self.debug_shell_socket.disconnect(endpoint)
            make_client(self.debug_shell_socket, self.curve_keys)
            self.debug_shell_socket.connect(endpoint)

    def init_heartbeat(self):
        # As IPKernelApp's (its own context, so the GIL never blocks it), with a CURVE socket.
        CurveHeartbeat.keys = self.curve_keys
        self.heartbeat = CurveHeartbeat(zmq.Context(), (self.transport, self.ip, self.hb_port))
        self.hb_port = self.heartbeat.port
        self.heartbeat.start()


if __name__ == "__main__":
    CurveKernelApp.launch_instance()
