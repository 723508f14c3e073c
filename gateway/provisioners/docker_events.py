"""One Docker event stream per gateway, read by one thread and handed to the event loop.

    events = ContainerEvents(client, {"label": "code-gateway.instance=ab12"}, loop=loop,
                             on_event=engine.handle_event, on_reconnect=engine.recheck)
    events.start()          # a daemon thread reads ``GET /events`` for as long as the gateway runs
    ...
    await events.stop()     # closes the stream and joins the thread

Every sandbox needs to learn at once when its container dies, yet a blocked ``container.wait()``
per sandbox would cost one thread each. Instead this single reader receives the container
events of all our containers (``die``, ``oom``, ``kill``, ``destroy``) and passes each to
``on_event`` in the event loop's thread (``call_soon_threadsafe``), where waiters are resolved.

The stream survives the engine going away: it reconnects with backoff and resumes ``since`` the
last event it saw, then calls ``on_reconnect`` so waiters can re-check what they missed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

#: The container events a sandbox's life depends on.
ACTIONS = ["die", "oom", "kill", "destroy"]


class ContainerEvents:
    """The owner of the event-reading thread; ``start()`` once, ``stop()`` once."""

    def __init__(
        self,
        client: Any,
        filters: dict[str, Any],
        *,
        loop: asyncio.AbstractEventLoop,
        on_event: Callable[[dict[str, Any]], None],
        on_reconnect: Callable[[], None],
        max_backoff: float = 5.0,
    ) -> None:
        self.client = client
        self.filters = {"type": "container", "event": ACTIONS, **filters}
        self.loop = loop
        self.on_event = on_event
        self.on_reconnect = on_reconnect
        self.max_backoff = max_backoff
        self._stopping = threading.Event()
        self._stream: Any = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: Set once the first subscription is in place (events from then on are seen).
        self.subscribed = threading.Event()
        #: Whether the stream is connected right now (read by the loop, written by the thread).
        self.connected = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="docker-events", daemon=True)
        self._thread.start()

    async def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._close_stream()
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, timeout)
            if self._thread.is_alive():
                log.warning("docker event reader did not stop within %g s", timeout)
            self._thread = None

    async def wait_subscribed(self, timeout: float) -> bool:
        """True once the stream is subscribed (so no later event is missed)."""
        return await asyncio.get_running_loop().run_in_executor(None, self.subscribed.wait, timeout)

    def _close_stream(self) -> None:
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            try:
                stream.close()
            except Exception:  # closing a broken stream may fail; it is gone either way
                log.debug("closing the docker event stream failed", exc_info=True)

    def _run(self) -> None:
        since: str | None = None
        backoff = 0.1
        first = True
        while not self._stopping.is_set():
            try:
                stream = self.client.events(decode=True, filters=self.filters, since=since)
                with self._lock:
                    if self._stopping.is_set():
                        stream.close()
                        break
                    self._stream = stream
                self.connected = True
                self.subscribed.set()
                if not first:
                    log.info("docker event stream reconnected")
                    self._dispatch(None)
                first = False
                backoff = 0.1
                for event in stream:
                    if "timeNano" in event:
                        nanos = int(event["timeNano"])
                        since = f"{nanos // 10**9}.{nanos % 10**9:09d}"
                    if not self._dispatch(event):
                        return
                if not self._stopping.is_set():
                    log.warning("docker event stream ended; reconnecting")
            except Exception as exc:
                if self._stopping.is_set():
                    break
                log.warning("docker event stream failed (%s); reconnecting in %.1f s", exc, backoff)
            finally:
                self.connected = False
                self._close_stream()
            self._stopping.wait(backoff)
            backoff = min(backoff * 2, self.max_backoff)

    def _dispatch(self, event: dict[str, Any] | None) -> bool:
        """Hand ``event`` (None: "reconnected") to the loop; False once the loop is gone."""
        try:
            if event is None:
                self.loop.call_soon_threadsafe(self.on_reconnect)
            else:
                self.loop.call_soon_threadsafe(self.on_event, event)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            self._stopping.set()
            return False
        return True
