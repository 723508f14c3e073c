"""API keys: who is calling.

    keyring = KeyRing(store=store, parent=app)
    await keyring.start()                     # generates and prints an admin key if none is configured
    user = await keyring.authenticate(key)    # the user, or None

Keys come from ``api_keys`` (``GATEWAY_API_KEYS="alice:KEY1,bob:KEY2"``) and from the store, where
``code-gateway keys create USER`` puts them. Only SHA-256 hashes are kept and compared: API keys are
long random strings, so a plain hash is enough, and a database leak reveals no usable key.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Any

from traitlets import Unicode
from traitlets.config import LoggingConfigurable

from gateway.errors import InvalidRequest
from gateway.store.base import Store


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

    def __init__(self, *, store: Store, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = store
        self._known: dict[str, str] = parse_key_pairs(self.api_keys)
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
        if user is None:
            # Keys made by `code-gateway keys create` while we run are found here, then cached.
            user = await self.store.find_api_key(digest)
            if user is not None:
                self._known[digest] = user
        return user

    async def create(self, user: str, key_format: str = "gateway") -> str:
        """Make a key for ``user`` (of ``KEY_FORMATS``), store its hash, and return the key (shown once)."""
        if key_format not in KEY_FORMATS:
            raise InvalidRequest(f"unknown key format {key_format!r}: one of {', '.join(KEY_FORMATS)}")
        key = new_key(key_format)
        await self.store.add_api_key(user, hash_key(key))
        return key
