"""Which store a ``--store-url`` means: the one place that maps a URL to a store class.

    open_store("", data_dir)                                   # SQLite: <data_dir>/gateway.db
    open_store("sqlite:////var/lib/gw/gateway.db", data_dir)   # SQLite at an absolute path
    open_store("sqlite:///gateway.db", data_dir)               # ... or relative to the working directory
    open_store("postgresql://gateway@db:5432/gateway", data_dir)

SQLite URLs follow SQLAlchemy's form: what follows ``sqlite:///`` is the path.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

from gateway.store.base import Store

SQLITE_PREFIX = "sqlite:///"
POSTGRES_SCHEMES = ("postgresql", "postgres")


def check_url(url: str) -> str:
    """``url`` if it names a store we have; ``ValueError`` saying what is wrong otherwise."""
    if not url or (url.startswith(SQLITE_PREFIX) and len(url) > len(SQLITE_PREFIX)):
        return url
    scheme = urlsplit(url).scheme
    if scheme in POSTGRES_SCHEMES:
        if not urlsplit(url).hostname and "host=" not in url:
            raise ValueError("a PostgreSQL store URL needs a host: postgresql://USER@HOST:PORT/DB")
        return url
    raise ValueError(f"unknown store URL scheme {scheme!r}: "
                     "use sqlite:///PATH or postgresql://USER@HOST:PORT/DB")


def open_store(url: str, data_dir: str) -> Store:
    """The store ``url`` names (not opened yet); the default is SQLite in ``data_dir``."""
    check_url(url)
    if urlsplit(url).scheme in POSTGRES_SCHEMES:
        try:
            from gateway.store.postgres import PostgresStore  # imports asyncpg: only when it is asked for
        except ImportError as exc:
            raise RuntimeError(f"the PostgreSQL store needs asyncpg ({exc}): "
                               "pip install 'code-interpreter-gateway[postgresql]'") from None
        return PostgresStore(url)
    from gateway.store.sqlite import SQLiteStore

    path = url[len(SQLITE_PREFIX):] if url else os.path.join(data_dir, "gateway.db")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return SQLiteStore(path)
