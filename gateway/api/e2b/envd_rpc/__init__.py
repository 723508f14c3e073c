"""Generated code for envd's services (``process.Process``, ``filesystem.Filesystem``): message classes
(protobuf-py) and connectrpc's ASGI applications and service protocols. Do not edit: run
``generate.sh``.

``proto/`` holds E2B's envd interface, copied from ``spec/envd/`` of e2b-dev/E2B (Apache-2.0):
the contract the SDKs speak.
"""
