"""The HTTP and WebSocket API: the only layer that knows about Tornado."""
