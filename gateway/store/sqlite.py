"""The embedded default store: one SQLite file in the data directory, used from two threads.

    store = SQLiteStore("/var/lib/code-gateway/gateway.db")
    await store.open()

The schema is ``gateway.store.migrations``, brought up to date at ``open()``. A writer thread
owns one connection: each batch of writes (``gateway.store.writes``) is encoded and committed
there in one ``BEGIN IMMEDIATE`` transaction, so the event loop never waits on the disk, on the
busy timeout or on encoding. A reader thread owns another connection and decodes what it reads.
In WAL mode readers never block the writer, and other processes (``code-gateway keys create``)
may write while the gateway runs.

A small batch (values under ``loop_commit_bytes`` in all, such as an execution of ``1+1`` being
accepted or finished, and no bulk write: a prune may delete any number of rows) is committed on
the loop's own thread instead, on a third connection, when the writer thread has nothing to do:
it costs the loop about what handing it over would (a commit is writes into the WAL file, tens
of microseconds), without the two hand-overs between threads on the way to the answer, nor the
writer thread taking turns at the GIL with the loop meanwhile. That connection never waits: its busy timeout is zero, and a batch that
finds the file locked by another process goes to the writer thread, which waits as before. With
``synchronous="FULL"`` (a commit waits for the disk) every batch goes to the writer thread.

WAL checkpoints (copying committed pages into the database file, then syncing it) are the writer
thread's next job once about ``checkpoint_pages`` pages were committed since the last one, not
part of a commit: SQLite's own automatic checkpoint runs inside the commit that crosses its
threshold, and a commit holding a big output (a 2 MiB plot is 700 pages) would then also read
the WAL back, write the file and wait for its sync before the execution that made it could be
answered. Commits that come meanwhile wait for the checkpoint as they would have, and the next
one starts the WAL file over (a checkpoint beside commits, on another connection, would rarely
catch up with them, and the WAL would grow).

Durability: a commit is in the WAL file when it returns, so it survives the gateway process
being killed; with ``synchronous=NORMAL`` an OS crash or power cut may lose the last commits
(never corrupting the file). ``synchronous="FULL"`` makes each commit wait for the disk.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from gateway import timestamps
from gateway.errors import StoreUnavailable
from gateway.store import codec, migrations
from gateway.store.base import Record
from gateway.store.sql import SQLStore
from gateway.store.writes import Outcome, Statement, Write, prepare, small

T = TypeVar("T")

log = logging.getLogger(__name__)

#: Errors that are one write's own (a constraint, a value SQLite cannot bind, JSON it cannot
#: encode): that write fails alone. Any other error fails the batch, which is retried.
RECORD_ERRORS = (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError, sqlite3.ProgrammingError,
                 OverflowError, TypeError, ValueError)


def locked(exc: sqlite3.OperationalError) -> bool:
    """Whether SQLite refused because another connection holds the lock (busy), not for the data or disk."""
    return (exc.sqlite_errorcode & 0xFF) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)  # (& 0xFF: any extended code)


class SQLiteStore(SQLStore):
    kind = "sqlite"

    def __init__(self, path: str, *, busy_timeout: float = 10.0, synchronous: str = "NORMAL",
                 max_backoff: float = 5.0, close_timeout: float = 10.0, checkpoint_pages: int = 1000,
                 loop_commit_bytes: int = 1 << 16) -> None:
        super().__init__(max_backoff=max_backoff, close_timeout=close_timeout)
        self.path = path
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        #: Pages committed (an estimate from the bytes written) after which a checkpoint is due
        #: (SQLite's default automatic checkpoint threshold).
        self.checkpoint_pages = checkpoint_pages
        #: Batches whose values come to fewer bytes commit on the loop's thread (0: none do).
        self.loop_commit_bytes = loop_commit_bytes if synchronous.upper() in ("OFF", "NORMAL") else 0
        #: Batches committed on the loop's thread so far.
        self.loop_commits = 0
        #: Checkpoints run so far, and the last one's answer: (busy, frames in the WAL, frames copied).
        self.checkpoints = 0
        self.last_checkpoint: tuple[int, int, int] | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-reader")
        self._db: sqlite3.Connection | None = None
        self._loop_db: sqlite3.Connection | None = None
        self._reads: sqlite3.Connection | None = None
        #: The last checkpoint handed to the writer thread: the thread is idle once it is done (the
        #: write queue hands over one commit at a time, and calls ``_commit`` only between them).
        self._checkpoint: Future[None] | None = None
        # (whichever thread commits)
        self._page_size = 4096
        self._pages_since_checkpoint = 0

    @staticmethod
    async def _on(thread: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(thread, fn, *args)

    def _connect_here(self, *, for_loop: bool = False) -> sqlite3.Connection:
        """A connection for the calling thread (each thread has its own), or (``for_loop``) made
        here for the loop's thread: one that never waits for a lock."""
        db = sqlite3.connect(self.path, isolation_level=None, timeout=0 if for_loop else self.busy_timeout,
                             check_same_thread=not for_loop)
        self._use_wal(db)
        db.execute(f"PRAGMA synchronous={self.synchronous}")
        return db

    def _use_wal(self, db: sqlite3.Connection) -> None:
        """Switch ``db`` to WAL, waiting out other processes doing the same (at most the busy timeout).

        SQLite answers "database is locked" at once, without calling the busy handler, when another
        connection holds the lock a journal mode change needs: replicas (or stores) opening a new
        database together would fail their start.
        """
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if not locked(exc) or time.monotonic() >= deadline:
                    raise
            time.sleep(0.02)

    def _open_writer(self) -> None:
        self._db = self._connect_here()
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # a job of its own (see the module)
        self._page_size = int(self._db.execute("PRAGMA page_size").fetchone()[0])
        self._db.execute(migrations.CREATE_TABLE)
        while True:  # one transaction per migration, under the write lock (other processes wait)
            self._db.execute("BEGIN IMMEDIATE")
            try:
                todo = migrations.pending(self._db.execute(migrations.CURRENT_VERSION).fetchone()[0])
                if todo:
                    for statement in todo[0].statements("sqlite"):
                        self._db.execute(statement)
                    self._db.execute(migrations.RECORD_VERSION,
                                     (todo[0].version, todo[0].name, timestamps.to_iso(timestamps.now())))
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            if len(todo) <= 1:
                return

    async def _connect(self) -> None:
        await self._on(self._writer, self._open_writer)
        if self.loop_commit_bytes:  # (made on the writer thread: the switch to WAL may wait)
            self._loop_db = await self._on(self._writer, lambda: self._connect_here(for_loop=True))
        self._reads = await self._on(self._reader, self._connect_here)

    async def _disconnect(self) -> None:
        if self._reads is not None:
            await self._on(self._reader, self._reads.close)
            self._reads = None
        if self._loop_db is not None:  # (the write queue has stopped: no commit is under way on it)
            self._loop_db.close()
            self._loop_db = None
        if self._db is not None:
            await self._on(self._writer, self._db.close)  # after any commit still under way
            self._db = None
        self._reader.shutdown(wait=True)
        self._writer.shutdown(wait=True)

    # -- writes (on the writer thread, or the loop's for a small batch) ----------------------------

    def _commit(self, batch: list[Write]) -> asyncio.Future[list[Outcome]]:
        loop = asyncio.get_running_loop()
        writer_idle = self._checkpoint is None or self._checkpoint.done()
        if self._loop_db is not None and writer_idle and small(batch, self.loop_commit_bytes):
            done: asyncio.Future[list[Outcome]] = loop.create_future()
            try:
                done.set_result(self._commit_on(self._loop_db, batch))
                self.loop_commits += 1
                return done
            except sqlite3.OperationalError as exc:
                if not locked(exc):  # (locked: another process writes; the writer thread waits)
                    done.set_exception(exc)
                    return done
            except Exception as exc:
                done.set_exception(exc)
                return done
        return loop.run_in_executor(self._writer, self._commit_here, batch)

    def _commit_here(self, batch: list[Write]) -> list[Outcome]:
        assert self._db is not None, "store is not open"
        return self._commit_on(self._db, batch)

    def _commit_on(self, db: sqlite3.Connection, batch: list[Write]) -> list[Outcome]:
        """The batch in one transaction on ``db``: each write's outcome; raises if it was rolled back."""
        prepared = prepare(batch, RECORD_ERRORS)
        db.execute("BEGIN IMMEDIATE")
        try:
            outcomes = [item if isinstance(item, BaseException) else self._apply(db, item)
                        for item in prepared]
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # the error that got us here is the one to report
            raise
        self._count_pages(prepared)
        return outcomes

    def _count_pages(self, prepared: list[list[Statement] | BaseException]) -> None:
        """Add what a commit wrote (its values' bytes in pages, and a page per statement for the
        row's and index's own pages); ask for a checkpoint once enough has gathered."""
        written = 0
        for statements in prepared:
            if isinstance(statements, BaseException):
                continue
            for _, params in statements:
                written += self._page_size + sum(len(p) for p in params if isinstance(p, (str, bytes)))
        self._pages_since_checkpoint += written // self._page_size
        if self._pages_since_checkpoint >= self.checkpoint_pages:
            self._pages_since_checkpoint = 0  # (what is committed from now on counts towards the next)
            # Behind this commit: its waiters hear of it first. (Set before they do, on either thread.)
            self._checkpoint = self._writer.submit(self._checkpoint_here)

    def _checkpoint_here(self) -> None:
        """Copy what the WAL holds into the database file, as far as readers allow (never waits on them)."""
        db = self._db
        if db is None:
            return
        try:
            busy, frames, copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
        except sqlite3.Error as exc:  # (the next one tries again; commits go on meanwhile)
            log.warning("WAL checkpoint failed: %s", exc)
            return
        self.checkpoints += 1
        self.last_checkpoint = (int(busy), int(frames), int(copied))

    @staticmethod
    def _apply(db: sqlite3.Connection, statements: list[Statement]) -> Outcome:
        """One write's statements, all or none of them (a savepoint when there are several)."""
        if len(statements) == 1:
            sql, params = statements[0]
            try:
                return db.execute(sql, params).rowcount
            except RECORD_ERRORS as exc:
                return exc
        db.execute("SAVEPOINT write")
        try:
            count = 0
            for sql, params in statements:
                count = db.execute(sql, params).rowcount
        except RECORD_ERRORS as exc:
            db.execute("ROLLBACK TO write")
            db.execute("RELEASE write")
            return exc
        db.execute("RELEASE write")
        return count

    # -- reads (on the reader thread) ------------------------------------------------------------

    def _query_here(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        assert self._reads is not None, "store is not open"
        try:
            return self._reads.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            raise StoreUnavailable(f"the database cannot be read ({exc})") from exc

    def _decoded_here(self, sql: str, params: tuple[Any, ...]) -> list[Record]:
        return [codec.decode(row[0]) for row in self._query_here(sql, params)]

    async def _fetch_rows(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return await self._on(self._reader, self._query_here, sql, params)

    async def _fetch_records(self, sql: str, params: tuple[Any, ...]) -> list[Record]:
        return await self._on(self._reader, self._decoded_here, sql, params)
