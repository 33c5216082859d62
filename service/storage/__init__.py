"""Where recordings are kept: one interface, interchangeable backends.

Download code only talks to :class:`Storage`; a backend (the local filesystem today, an
S3-compatible bucket later) is chosen once, at start-up, from the settings.
"""

from __future__ import annotations

from service.storage.base import CHUNK_SIZE, InvalidName, NotStored, Storage, Upload, check_name
from service.storage.local import LocalStorage

__all__ = [
    "CHUNK_SIZE",
    "InvalidName",
    "LocalStorage",
    "NotStored",
    "Storage",
    "Upload",
    "check_name",
]
