"""API keys: who is calling.

    keyring = KeyRing(store=store, parent=app)
    await keyring.start()                     # generates and prints an admin key if none is configured
    user = await keyring.authenticate(key)    # the user, or None

Keys come from ``api_keys`` (``GATEWAY_API_KEYS="alice:KEY1,bob:KEY2"``) and from the store, where
``code-gateway keys create USER`` puts them and ``code-gateway keys revoke`` removes them. Only SHA-256
hashes are kept and compared: API keys are long random strings, so a plain hash is enough, and a
database leak reveals no usable key.

A key found in the store is trusted for ``cache_seconds`` before the store is asked again, so a
key created or revoked through any replica sharing the store is honoured by all of them within
that time (a key never seen is always looked up). If the store cannot answer, a key seen before
keeps working: an outage does not lock everyone out.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from typing import Any

from traitlets import Float, Unicode
from traitlets.config import LoggingConfigurable

from gateway.errors import InvalidRequest, StoreUnavailable
from gateway.store.base import Store

log = logging.getLogger(__name__)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


#: The forms of key ``code-gateway keys create --format`` makes: ours, and E2B's (``e2b_`` and 40 hex
#: digits, the form the E2B SDKs and API expect), which work on our API as well.
KEY_FORMATS = ("gateway", "e2b")


def new_key(key_format: str = "gateway") -> str:
    if key_format == "e2b":
        return "e2b_" + secrets.token_hex(20)
    return "cig_" + secrets.token_urlsafe(32)


def parse_key_pairs(text: str) -> dict[str, str]:
    """``"alice:KEY1,bob:KEY2"`` -> ``{hash(KEY1): "alice", hash(KEY2): "bob"}``."""
    users: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        user, sep, key = pair.partition(":")
        if not sep or not user.strip() or not key.strip():
            raise InvalidRequest(f"api_keys entry {pair.split(':')[0]!r}... is not of the form user:key")
        users[hash_key(key.strip())] = user.strip()
    return users


class KeyRing(LoggingConfigurable):
    api_keys = Unicode(
        "", help="Comma-separated user:key pairs, e.g. 'alice:KEY1,bob:KEY2'. The user 'admin' sees everything."
    ).tag(config=True)

    cache_seconds = Float(
        5.0, help="Seconds a key found in the store is trusted before asking the store again: a key revoked "
        "(code-gateway keys revoke) stops working on every replica within this time."
    ).tag(config=True)

    def __init__(self, *, store: Store, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = store
        #: The configured keys (and a generated one): configuration, never revoked.
        self._known: dict[str, str] = parse_key_pairs(self.api_keys)
        #: Keys found in the store: hash -> (user, when it was found, by the monotonic clock).
        self._found: dict[str, tuple[str, float]] = {}
        #: Set when no key was configured and one was made up for this run.
        self.generated_key: str | None = None

    async def start(self) -> None:
        if self._known or await self.store.count_api_keys():
            return
        self.generated_key = new_key()
        self._known[hash_key(self.generated_key)] = "admin"

    async def authenticate(self, key: str) -> str | None:
        if not key:
            return None
        digest = hash_key(key)
        user = self._known.get(digest)
        if user is not None:
            return user
        found = self._found.get(digest)
        now = time.monotonic()
        if found is not None and now - found[1] < self.cache_seconds:
            return found[0]
        try:
            user = await self.store.find_api_key(digest)
        except StoreUnavailable:
            if found is None:
                raise
            log.warning("the store cannot say whether a key of %s is still valid; trusting it meanwhile", found[0])
            return found[0]
        if user is None:
            self._found.pop(digest, None)  # revoked (or never was)
        else:
            self._found[digest] = (user, now)
        return user

    async def create(self, user: str, key_format: str = "gateway") -> str:
        """Make a key for ``user`` (of ``KEY_FORMATS``), store its hash, and return the key (shown once)."""
        if key_format not in KEY_FORMATS:
            raise InvalidRequest(f"unknown key format {key_format!r}: one of {', '.join(KEY_FORMATS)}")
        key = new_key(key_format)
        await self.store.add_api_key(user, hash_key(key))
        return key

    async def revoke(self, *, key: str | None = None, user: str | None = None) -> int:
        """Remove from the store one key, or every key of ``user``; how many went. Every replica refuses
        them within ``cache_seconds`` (keys of ``api_keys`` are configuration: change that instead)."""
        removed = await self.store.revoke_api_keys(key_hash=hash_key(key) if key else None, user=user)
        for digest in [d for d, (owner, _) in self._found.items() if (key and d == hash_key(key)) or owner == user]:
            del self._found[digest]
        return removed
