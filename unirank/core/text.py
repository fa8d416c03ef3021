"""Query and title normalisation, tokenisation and stable token hashing, shared by training and serving."""

from __future__ import annotations

import re
import unicodedata
import zlib
from functools import lru_cache

_NON_WORD = re.compile(r"[^0-9a-z]+")

# Token ids are hashed into this many buckets; 0 is reserved for padding.
TOKEN_BUCKETS = 1 << 15
MAX_QUERY_TOKENS = 8


@lru_cache(maxsize=200_000)
def normalize(text: str | None) -> str:
    """NFKC, case-fold, strip accents, keep letters and digits, collapse whitespace."""
    if not text:
        return ""
    if text.isascii():  # NFKC and NFKD leave ASCII as it is and case-fold it to lower case: the same, ~3x sooner
        return _NON_WORD.sub(" ", text.lower()).strip()
    return normalize_unicode(text)


def normalize_unicode(text: str) -> str:
    """`normalize` through the Unicode normal forms, whatever the text (the definition)."""
    decomposed = unicodedata.normalize("NFKD", unicodedata.normalize("NFKC", text).casefold())
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return _NON_WORD.sub(" ", stripped).strip()


def tokens(normalized: str) -> list[str]:
    return normalized.split() if normalized else []


@lru_cache(maxsize=200_000)
def token_id(token: str) -> int:
    """A stable (process-independent) bucket id in 1..TOKEN_BUCKETS-1."""
    return 1 + zlib.crc32(token.encode()) % (TOKEN_BUCKETS - 1)


def token_ids(normalized: str) -> list[int]:
    return [token_id(t) for t in tokens(normalized)[:MAX_QUERY_TOKENS]]
