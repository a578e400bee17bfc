"""Input bounds (object_store.proto header comment), checked in the domain so every adapter gets them.

Every failure is an InvalidArgument whose message names the field and the rule.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from orbitvault.errors import InvalidArgument

MAX_KEY_BYTES = 1024
MAX_CONTENT_TYPE = 255
MAX_METADATA_ENTRIES = 64
# The note (§8) caps user metadata at 1 KiB (keys + values) so every object's essentials fit in
# the 2 KiB catalog records of its shard headers.
MAX_METADATA_BYTES = 1024
MAX_OBJECT_SIZE = 5 * 2**40
MAX_PAGE_SIZE = 1000
MAX_PREFIX = 1024
MAX_DELIMITER = 16
ID_LEN = 32

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_TENANT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_META_KEY = re.compile(r"^[a-z0-9._-]{1,128}$")


def bucket_name(name: object) -> str:
    if not isinstance(name, str) or not _BUCKET.match(name) or ".." in name:
        raise InvalidArgument(
            f"bucket name {name!r} is invalid: use 3 to 63 characters of a-z, 0-9, '.' and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def tenant_name(name: object) -> str:
    if not isinstance(name, str) or not _TENANT.match(name):
        raise InvalidArgument(
            f"tenant name {name!r} is invalid: use 1 to 63 characters of a-z, 0-9, '.', '_' and '-', "
            "starting with a letter or digit"
        )
    return name


def object_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidArgument("object key must be a non-empty string")
    try:
        raw = key.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgument("object key must be valid UTF-8 (no lone surrogates)") from None
    if len(raw) > MAX_KEY_BYTES:
        raise InvalidArgument(f"object key is {len(raw)} bytes; at most {MAX_KEY_BYTES} bytes of UTF-8")
    if "\x00" in key:
        raise InvalidArgument("object key must not contain NUL")
    return key


def content_type(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidArgument("content_type must be a string")
    if len(value.encode("utf-8", "replace")) > MAX_CONTENT_TYPE or any(ord(c) < 32 for c in value):
        raise InvalidArgument(f"content_type must be printable and at most {MAX_CONTENT_TYPE} bytes")
    return value


def metadata(value: Mapping[str, str] | None) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgument("metadata must be a mapping of strings to strings")
    if len(value) > MAX_METADATA_ENTRIES:
        raise InvalidArgument(f"metadata has {len(value)} entries; at most {MAX_METADATA_ENTRIES}")
    total = 0
    out: dict[str, str] = {}
    for k, v in value.items():
        if not isinstance(k, str) or not _META_KEY.match(k):
            raise InvalidArgument(f"metadata key {k!r} must be 1 to 128 characters of a-z, 0-9, '.', '_', '-'")
        if not isinstance(v, str):
            raise InvalidArgument(f"metadata value of {k!r} must be a string")
        try:
            total += len(k) + len(v.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidArgument(f"metadata value of {k!r} must be valid UTF-8") from None
        out[k] = v
    if total > MAX_METADATA_BYTES:
        raise InvalidArgument(f"metadata is {total} bytes (keys and values); at most {MAX_METADATA_BYTES}")
    return dict(sorted(out.items()))


def object_size(size: object) -> int | None:
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_OBJECT_SIZE:
        raise InvalidArgument(f"size must be an integer from 0 to {MAX_OBJECT_SIZE} (5 TiB), got {size!r}")
    return size


def optional_id(value: object, what: str) -> bytes | None:
    if value is None or value == b"":
        return None
    if not isinstance(value, bytes) or len(value) != ID_LEN:
        raise InvalidArgument(f"{what} must be {ID_LEN} bytes")
    return value


def page_size(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0 or value > MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be 0..{MAX_PAGE_SIZE} (0 means {MAX_PAGE_SIZE}), got {value!r}")
    return value or MAX_PAGE_SIZE


def bounded_str(value: object, what: str, limit: int) -> str:
    if not isinstance(value, str) or len(value.encode("utf-8", "replace")) > limit:
        raise InvalidArgument(f"{what} must be a string of at most {limit} bytes")
    return value


def object_range(offset: object, length: object, size: int) -> tuple[int, int]:
    """(offset, length) clipped at the end of the object; offset == size reads nothing."""
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise InvalidArgument(f"offset must be a non-negative integer, got {offset!r}")
    if offset > size:
        raise InvalidArgument(f"offset {offset} is beyond the end of the {size}-byte object")
    if length is None:
        return offset, size - offset
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise InvalidArgument(f"length must be a non-negative integer, got {length!r}")
    return offset, min(length, size - offset)
