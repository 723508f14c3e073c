"""Lifecycle events: written to the store's outbox with the change they describe, read by the SSE feed and webhooks."""
