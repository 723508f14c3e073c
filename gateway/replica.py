"""Who this gateway process is among the replicas sharing a store: its id and the address others reach it at.

    replica = Replica.claim(data_dir, address="http://10.0.0.5:8888")   # or id_=... to choose it
    replica.id          # persisted in <data-dir>/replica-id: the same after a restart, unique per data dir
    replica.release()   # at exit (the lock is released by the kernel anyway if the process dies)

The id labels this replica's containers and names it as the holder of its sandboxes' leases
(``gateway.sandboxes.leases``), so it must survive restarts (a restarted replica takes back
what it held) and be unique (two processes with one id would each think the other's
sandboxes their own). It is a random UUID written once into the data directory, which the
process holds an exclusive lock on for as long as it runs: a second gateway started on the
same data directory is refused with a message saying so, instead of sharing an identity.
"""

from __future__ import annotations

import dataclasses
import fcntl
import os
import re
import uuid
from pathlib import Path

ID_FILE = "replica-id"
LOCK_FILE = "replica.lock"
#: What a replica id may look like (it becomes a Docker label value and a column in the store).
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class ReplicaInUse(RuntimeError):
    """Another running gateway holds this data directory (and so this replica's identity)."""


@dataclasses.dataclass
class Replica:
    id: str
    #: The base URL other replicas forward requests to (``http://host:port``).
    address: str = ""
    _lock: int | None = dataclasses.field(default=None, repr=False)

    @classmethod
    def claim(cls, data_dir: str | os.PathLike[str], *, id_: str = "", address: str = "") -> Replica:
        """This process's identity: ``id_`` if given, else the one persisted in ``data_dir`` (made on first use).

        Raises ``ReplicaInUse`` if another process runs on ``data_dir``, ``ValueError`` for a malformed id.
        """
        directory = Path(data_dir)
        directory.mkdir(parents=True, exist_ok=True)
        lock = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(lock)
            raise ReplicaInUse(f"another gateway is running on the data directory {directory}: each replica "
                               "needs a data directory of its own (--data-dir)") from None
        try:
            replica_id = id_ or persisted_id(directory)
            if not ID_PATTERN.fullmatch(replica_id):
                raise ValueError(f"--replica-id {replica_id!r}: 1 to 64 letters, digits, '_', '.' or '-', "
                                 "starting with a letter or digit")
        except BaseException:
            os.close(lock)
            raise
        return cls(replica_id, address, lock)

    def release(self) -> None:
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def persisted_id(directory: Path) -> str:
    """The id kept in ``directory`` (written atomically the first time, a random UUID)."""
    path = directory / ID_FILE
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    made = str(uuid.uuid4())
    partial = path.with_name(ID_FILE + ".new")
    partial.write_text(made + "\n")
    os.replace(partial, path)
    return made
