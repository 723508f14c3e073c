"""Code Interpreter Gateway: stateful, sandboxed Jupyter kernels over REST, streams and the Jupyter protocol."""

__version__ = "0.1.0"
