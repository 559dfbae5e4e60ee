"""State tokens: a stream's state, handed to the client between HTTP requests, signed and bound to one model.

A token is base64url (no padding) of::

    version (1 byte, = 1) | model fingerprint (8 bytes) | state (the model's state arrays, raw little-endian) | MAC (16 bytes)

* **Bound to one model version**: the fingerprint is the first 8 bytes of SHA-256 over the model's tag
  and its weights' SHA-256, and the MAC key is derived from both too, so another model's token, or a
  token from another version of the same name, is refused (and named, when this server serves the
  model that made it).
* **Signed**: the MAC is HMAC-SHA256 (cut to 16 bytes) over everything before it, under a per-model
  key derived from ``SEQSERVE_STATE_KEY``. Set that key, the same on every worker and replica, so that
  only your servers can make tokens and any of them can continue any stream. Unset, the key is derived
  from the model alone: tokens still work across workers, restarts and replicas serving the same model
  version, and damage is still caught, but whoever holds the model's weights could forge a token.
  That is a bounded risk: a state only ever changes the answers of the stream that sends it.
* **Not encrypted**: a client can read everything in its token: the number of steps its stream has
  seen, the running statistics and the last few values of its own inputs, and the model's hidden state
  (from which, with the weights, its inputs can partly be inferred). Nothing of other streams or of
  the weights is in it. Treat a token like the data the client sent.
* **One spelling**: base64 decoders forgive a stray last character and nonzero unused bits, so several
  strings decode to the same bytes; only the exact text :meth:`StateSigner.seal` makes is accepted.
* **Fixed size per model** (uncompressed: hidden states do not compress; a 2x64 GRU classifier's token
  is about 2 KB), so a cut-off token is recognised as truncated.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re

from models.artifact import LoadedModel

VERSION = 1
FINGERPRINT_BYTES = 8
MAC_BYTES = 16
HEADER_BYTES = 1 + FINGERPRINT_BYTES
HEADER_CHARS = HEADER_BYTES * 4 // 3  # 9 bytes are exactly 12 base64 characters
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


NOT_CANONICAL = ("is altered: not spelled as this server spells tokens (base64url without padding, "
                 "no extra character, unused low bits of the last character zero)")


class StateTokenError(ValueError):
    """A state token that cannot be used; the message says why."""


def _encode(raw: bytes) -> str:
    """The one spelling of ``raw`` as a token: base64url without padding."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def fingerprint(model: LoadedModel) -> bytes:
    """8 bytes that identify the exact model version (tag and weights)."""
    return version_fingerprint(model.tag, model.card.weights_sha256)


def version_fingerprint(tag: str, weights_sha256: str) -> bytes:
    """:func:`fingerprint` of the version ``tag`` whose weights have this sha256, loaded or not."""
    return hashlib.sha256(f"seqserve-state\0{tag}\0{weights_sha256}".encode()).digest()[:FINGERPRINT_BYTES]


class StateSigner:
    """Makes and opens state tokens for a set of served models, under one deployment key (or none)."""

    def __init__(self, key: str, models: list[LoadedModel]):
        self.key = key.encode()
        self._model_keys: dict[str, bytes] = {}
        self.makers: dict[bytes, str] = {}  # fingerprint -> tag, to name another served model's token
        for model in models:
            self.add(model)

    def add(self, model: LoadedModel) -> None:
        """Know ``model`` as a maker of tokens: a token of it sent to another model is refused naming it."""
        self.makers[fingerprint(model)] = model.tag

    def add_retired(self, tag: str, weights_sha256: str) -> None:
        """Know a version this worker never loaded, older than those it serves, as a maker of tokens: its tokens
        are then answered as those of a version no longer served, as by the workers that unloaded it."""
        self.makers[version_fingerprint(tag, weights_sha256)] = tag

    def made_by(self, token: str) -> str | None:
        """The tag of the known model named at the head of ``token``, before any check (None when no known model
        is named there, or it is not a token): which model's :meth:`open` should check it."""
        head = token[: HEADER_CHARS]
        if len(head) < HEADER_CHARS or not _BASE64URL.fullmatch(head):
            return None
        raw = base64.urlsafe_b64decode(head)
        return self.makers.get(raw[1:HEADER_BYTES]) if raw[0] == VERSION else None

    def _model_key(self, model: LoadedModel) -> bytes:
        key = self._model_keys.get(model.tag)
        if key is None:
            key = hmac.new(self.key, b"seqserve-state-key\0" + fingerprint(model), hashlib.sha256).digest()
            self._model_keys[model.tag] = key
        return key

    def seal(self, model: LoadedModel, state: bytes) -> str:
        """The token for ``state`` (a packed state of ``model``)."""
        body = bytes([VERSION]) + fingerprint(model) + state
        mac = hmac.new(self._model_key(model), body, hashlib.sha256).digest()[:MAC_BYTES]
        return _encode(body + mac)

    def open(self, token: str, model: LoadedModel, state_bytes: int) -> bytes:
        """The packed state inside ``token``, after checking it was made by ``model`` and not changed since.

        ``state_bytes`` is the size of one state of ``model``. Raises :class:`StateTokenError`.
        """
        if not _BASE64URL.fullmatch(token):
            raise StateTokenError("is not a state token: not base64url text")
        usable = token[: len(token) - 1] if len(token) % 4 == 1 else token  # a cut can leave a lone character
        try:
            raw = base64.urlsafe_b64decode(usable + "=" * (-len(usable) % 4))
        except (binascii.Error, ValueError):
            raise StateTokenError("is not a state token: not base64url text") from None
        expected = HEADER_BYTES + state_bytes + MAC_BYTES
        if len(raw) < HEADER_BYTES:
            raise StateTokenError(f"is truncated: {len(raw)} bytes, a state token of {model.tag} has {expected}")
        if raw[0] != VERSION:
            raise StateTokenError(f"token version {raw[0]} is not one this server reads ({VERSION})")
        made_by = raw[1:HEADER_BYTES]
        if made_by != fingerprint(model):
            other = self.makers.get(made_by)
            if other is not None:
                raise StateTokenError(f"was made by {other}, not {model.tag}; send it with the model that made it, or start a new stream without a state")
            raise StateTokenError(f"was made by another model or model version, not {model.tag}; start a new stream without a state")
        if len(raw) != expected:
            problem = "is truncated" if len(raw) < expected else "is too long"
            raise StateTokenError(f"{problem}: {len(raw)} bytes, a state token of {model.tag} has {expected}")
        # base64 decoding forgives a lone trailing character and nonzero unused low bits of the last one, so
        # several spellings decode to these bytes: only the one seal() makes is a token. The comparison is
        # plain: both sides come from the client's own text, no secret is involved (the MAC check below is
        # the constant-time one).
        if _encode(raw) != token:
            raise StateTokenError(NOT_CANONICAL)
        body, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        if not hmac.compare_digest(mac, hmac.new(self._model_key(model), body, hashlib.sha256).digest()[:MAC_BYTES]):
            raise StateTokenError("signature does not match: the token was altered, or signed with another SEQSERVE_STATE_KEY")
        return body[HEADER_BYTES:]
