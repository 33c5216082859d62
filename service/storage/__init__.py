"""Where recordings are kept: one interface, interchangeable backends.

Download code only talks to :class:`Storage`; a backend (the local filesystem, or an
S3-compatible bucket) is chosen once, at start-up, from the settings by :func:`open_storage`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.settings import S3Location, Settings
from service.storage.base import CHUNK_SIZE, InvalidName, NotStored, Storage, Upload, check_name
from service.storage.local import LocalStorage

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "CHUNK_SIZE",
    "InvalidName",
    "LocalStorage",
    "NotStored",
    "Storage",
    "Upload",
    "check_name",
    "open_storage",
    "s3_client",
]


def open_storage(settings: Settings) -> Storage:
    """The bucket of ``RECORDINGS_STORAGE`` when set, else the directory ``RECORDINGS_DIR``."""
    if settings.recordings_s3 is None:
        return LocalStorage(settings.recordings_dir)
    # Imported here: boto3 is loaded only by processes that use it.
    from service.storage.s3 import S3Storage

    where = settings.recordings_s3
    return S3Storage(s3_client(where), where.bucket, where.prefix)


def s3_client(where: S3Location) -> S3Client:
    """A boto3 S3 client for ``where`` (thread-safe: one per process is enough)."""
    import boto3
    from botocore.config import Config

    secret, token = where.secret_access_key, where.session_token
    return boto3.session.Session().client(
        "s3",
        endpoint_url=where.endpoint_url,
        region_name=where.region,
        aws_access_key_id=where.access_key_id,
        aws_secret_access_key=secret.reveal() if secret else None,
        aws_session_token=token.reveal() if token else None,
        config=Config(retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32),
    )
