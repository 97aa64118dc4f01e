"""Whole characters out of byte-level tokens, for the trigger growth search.

A byte-level vocabulary (GPT-2 style BPE, or SentencePiece with byte fallback) splits a rare
character into tokens that are not characters: ``‽`` (``e2 80 bd``) is ``' âĢ'`` (``20 e2 80``)
then ``'½'`` (``bd``). A user can only type whole characters, so a trigger candidate is only
meaningful when its bytes decode as UTF-8. Growing one token at a time, such a trigger passes
through sequences that do not (``½`` alone before ``†``), which the model reads as garbage and the
first-token KL screen ranks low; :class:`Characters` tells the growth search which sequences are
whole and completes the others by the one token that makes them whole.

For a byte string ``b`` (a token sequence's bytes, joined):

* ``left``: its leading continuation bytes (``10xxxxxx``): a character begun before it;
* ``right``: the bytes missing from a multi-byte character begun in its last 3 bytes;
* ``middle``: whether what lies between decodes as strict UTF-8.

``b`` is **whole** when ``left == right == 0`` and ``middle`` holds. A sequence with a bad middle
(a character cut inside the sequence) cannot be mended at its ends and is dropped.
"""

from __future__ import annotations

import json
import re

import numpy as np
from transformers.convert_slow_tokenizer import bytes_to_unicode

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _utf8_length(lead: int) -> int:
    """Bytes of the character a lead byte opens (1 for ASCII; 0 for a continuation or invalid byte)."""
    if lead < 0x80:
        return 1
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return 0


def gaps(b: bytes) -> tuple[int, int, bool]:
    """``(left, right, middle)`` of the module docstring."""
    left = 0
    while left < min(len(b), 3) and 0x80 <= b[left] <= 0xBF:
        left += 1
    right, end = 0, len(b)
    for i in range(len(b) - 1, max(left, len(b) - 3) - 1, -1):
        n = _utf8_length(b[i])
        if n > 1:  # the last lead byte: is its character complete?
            right, end = max(0, n - (len(b) - i)), (i if n > len(b) - i else len(b))
            break
        if n == 1:
            break
    try:
        b[left:end].decode("utf-8")
        middle = True
    except UnicodeDecodeError:
        middle = False
    return left, right, middle


def token_bytes(tokenizer) -> list[bytes]:
    """The bytes of every token id: through the byte-level alphabet for a ByteLevel decoder, from
    ``<0xNN>`` for SentencePiece byte-fallback pieces, else the piece's UTF-8 (``▁`` a space)."""
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer's; a slow one has none
    decoder = (json.loads(backend.to_str()).get("decoder") or {}) if backend is not None else {}
    byte_level = "ByteLevel" in json.dumps(decoder)
    alphabet = {c: b for b, c in bytes_to_unicode().items()} if byte_level else {}
    out = []
    for piece in pieces:
        piece = piece or ""
        m = _BYTE_FALLBACK.fullmatch(piece)
        if m:
            out.append(bytes([int(m.group(1), 16)]))
        elif byte_level and all(c in alphabet for c in piece):
            out.append(bytes(alphabet[c] for c in piece))
        else:
            out.append(piece.replace("\u2581", " ").encode("utf-8"))
    return out


class Characters:
    """Which token sequences are whole characters, and the one-token completions of those that
    are not (module docstring)."""

    def __init__(self, tokenizer, vocab: np.ndarray | None = None):
        self.bytes = token_bytes(tokenizer)
        ids = range(len(self.bytes)) if vocab is None else vocab.tolist()
        # the only tokens that can mend a sequence's end: those not whole themselves
        self.fragments = np.array([i for i in ids if self.bytes[i] and not self.whole([i])], dtype=np.int64)

    def joined(self, ids: list[int]) -> bytes:
        return b"".join(self.bytes[i] for i in ids)

    def whole(self, ids: list[int]) -> bool:
        left, right, middle = gaps(self.joined(ids))
        return left == 0 and right == 0 and middle

    def complete(self, ids: list[int], score: np.ndarray, n: int) -> list[list[int]]:
        """``[ids]`` when whole; else at most ``n`` whole sequences of one more token on the open
        side, the mending tokens ranked by ``score`` (``[V]``, higher first); ``[]`` when no one
        token mends it (a bad middle, both ends open, or no such token)."""
        b = self.joined(ids)
        left, right, middle = gaps(b)
        if left == right == 0 and middle:
            return [list(ids)]
        if not middle or (left and right):
            return []
        if left:
            ok = [u for u in self.fragments if self.whole([int(u), *ids])]
        else:
            ok = [u for u in self.fragments if self.whole([*ids, int(u)])]
        s = np.nan_to_num(score[np.array(ok, dtype=np.int64)], nan=-np.inf) if ok else np.zeros(0)
        best = [int(ok[j]) for j in np.argsort(-s, kind="stable")[:n]]
        return [[u, *ids] if left else [*ids, u] for u in best]
