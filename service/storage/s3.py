"""Recordings in an S3-compatible bucket (``RECORDINGS_STORAGE=s3://bucket/prefix``).

An upload is a multipart upload that holds at most one part in memory: whatever the size
of the recording, a worker's memory stays flat. S3 makes an object visible only when its
upload completes, so readers never see a partial recording; an aborted upload leaves
nothing. A recording smaller than one part is sent in one ``PutObject``.

botocore's errors stay in this module: an endpoint that cannot be reached, a 5xx or
throttling (after boto3's own retries within the call) raise StorageUnavailable, any other
refusal a StorageError, each named by its S3 error code, never by its key.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import TYPE_CHECKING, cast

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    ResponseStreamingError,
)
from botocore.exceptions import ConnectionError as Unreachable
from botocore.response import StreamingBody

from service.storage.base import CHUNK_SIZE, NotStored, check_name, failure

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

# S3 takes parts of 5 MiB or more (the last excepted); 8 MiB keeps a 200 MiB recording
# within S3's 10,000 parts with room to spare, and costs one part of memory per upload.
PART_SIZE = 8 * 1024 * 1024
_MISSING = frozenset({"404", "NoSuchKey", "NotFound"})
# Codes of an S3 that is busy or briefly failing (some answer them with a 4xx status).
_BUSY = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "RequestTimeout",
        "InternalError",
        "ServiceUnavailable",
    }
)
# The connection failed or was cut (refused, reset, timed out), or the body came short.
_CUT = (Unreachable, HTTPClientError, IncompleteReadError, ResponseStreamingError)


def _missing(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code", "") in _MISSING


@contextmanager
def _translated(operation: str) -> Iterator[None]:
    """botocore's errors as StorageUnavailable or StorageError (NotStored passes)."""
    try:
        yield
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        code = exc.response.get("Error", {}).get("Code", "") or str(status)
        busy = code in _BUSY or status >= 500 or status == 429
        raise failure("s3", operation, code, transient=busy) from exc
    except BotoCoreError as exc:
        reason = type(exc).__name__
        raise failure("s3", operation, reason, transient=isinstance(exc, _CUT)) from exc


class S3Upload:
    """One object being written; see :class:`service.storage.base.Upload`."""

    def __init__(self, client: S3Client, bucket: str, key: str, part_size: int) -> None:
        self._client, self._bucket, self._key = client, bucket, key
        self._part_size = part_size
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self._done = False

    def write(self, data: bytes, /) -> int:
        self._buffer += data
        if len(self._buffer) >= self._part_size:
            # Parts need not be of one size: the whole buffer goes, without a copy.
            part, self._buffer = self._buffer, bytearray()
            with _translated("write"):
                self._send_part(part)
        return len(data)

    def _send_part(self, part: bytearray) -> None:
        if self._upload_id is None:
            started = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)
            self._upload_id = started["UploadId"]
        number = len(self._parts) + 1
        sent = self._client.upload_part(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=cast("bytes", part),  # botocore sends any bytes-like body as is
        )
        self._parts.append({"ETag": sent["ETag"], "PartNumber": number})

    def commit(self) -> None:
        with _translated("commit"):
            self._complete()
        self._buffer.clear()
        self._done = True

    def _complete(self) -> None:
        if self._upload_id is None:
            self._client.put_object(Bucket=self._bucket, Key=self._key, Body=bytes(self._buffer))
            return
        if self._buffer:
            self._send_part(self._buffer)
        self._client.complete_multipart_upload(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
        )

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer.clear()
        if self._upload_id is not None:
            # Aborting follows a failure, often of this very endpoint, and must not hide
            # it. An upload left open is no object (nothing is served); a bucket
            # lifecycle rule (AbortIncompleteMultipartUpload) reclaims its parts.
            with suppress(BotoCoreError, ClientError):
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._key, UploadId=self._upload_id
                )


class S3Storage:
    """A :class:`service.storage.base.Storage` in one bucket, under one key prefix."""

    def __init__(
        self, client: S3Client, bucket: str, prefix: str = "", *, part_size: int = PART_SIZE
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._part_size = part_size

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    @contextmanager
    def open_writer(self, name: str) -> Iterator[S3Upload]:
        upload = S3Upload(self.client, self.bucket, self._key(name), self._part_size)
        try:
            yield upload
        finally:
            upload.abort()

    def exists(self, name: str) -> bool:
        try:
            self.size(name)
        except NotStored:
            return False
        return True

    def size(self, name: str) -> int:
        with _translated("read"):
            try:
                head = self.client.head_object(Bucket=self.bucket, Key=self._key(name))
            except ClientError as exc:
                if _missing(exc):
                    raise NotStored(f"no stored object {name}") from None
                raise
        return head["ContentLength"]

    def open_reader(self, name: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        if start < 0 or (end is not None and end < start):
            raise ValueError("need 0 <= start <= end")
        if end == start:  # S3 has no empty range: check the object is there, read nothing
            self.size(name)
            return iter(())
        wanted = f"bytes={start}-{'' if end is None else end - 1}"
        with _translated("read"):
            try:
                got = self.client.get_object(Bucket=self.bucket, Key=self._key(name), Range=wanted)
            except ClientError as exc:
                if _missing(exc):
                    raise NotStored(f"no stored object {name}") from None
                raise
        return _chunks(got["Body"])

    def delete(self, name: str) -> None:
        with _translated("delete"):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(name))


def _chunks(body: StreamingBody) -> Iterator[bytes]:
    try:
        with _translated("read"):
            yield from body.iter_chunks(CHUNK_SIZE)
    finally:
        body.close()
