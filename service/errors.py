"""The service's own exceptions.

Each is raised with a message that is safe to log and to show: it never contains a phone
number or a secret. Lower-level exceptions are translated at the edge with ``raise ... from``.
"""

from __future__ import annotations


class ServiceError(Exception):
    """Base class of every error this service raises on purpose."""


class ConfigurationError(ServiceError):
    """An environment variable is missing or malformed; the message names it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class VtsError(ServiceError):
    """VTS did not do what we asked."""


class VtsUnavailable(VtsError):
    """VTS could not be reached or answered 429/5xx: try again later.

    ``retry_after`` is VTS's ``Retry-After`` in seconds, when it gave one.
    """

    def __init__(self, reason: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


class VtsNoNumberAvailable(VtsUnavailable):
    """VTS has no virtual number free for a new session (every one is held by a live
    session): nothing was created, and one may be freed at any time, so try again later."""


class VtsOutcomeUnknown(VtsUnavailable):
    """The request was sent but no answer came back: VTS may or may not have acted on it."""


class VtsRejected(VtsError):
    """VTS refused the request (4xx other than 429): retrying will not help."""

    def __init__(self, reason: str, *, status: int) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class VtsNotFound(VtsRejected):
    """VTS does not know the session (404)."""


class StoreUnavailable(ServiceError):
    """Redis could not be reached or did not answer in time."""


class WorkNotReady(ServiceError):
    """A job must wait for something that is on its way; try again shortly.

    ``retry_after`` (seconds) is how soon, or None for the job's backoff.
    """

    retry_after: float | None = None


class EventNotReady(WorkNotReady):
    """The event must wait: its session is not known yet (its create is still running)."""

    retry_after: float | None = 0.2


class RecordingPending(EventNotReady):
    """VTS does not serve the recording yet; try again after the job's backoff."""

    retry_after: float | None = None


class SessionNotReady(ServiceError):
    """The session has no VTS session yet (its create is still running); try again."""


class SessionBusy(ServiceError):
    """Another worker is acting on this session right now; try again shortly."""


class RecordingError(ServiceError):
    """A recording could not be downloaded. Messages hold no URL and no secret."""

    def __init__(self, reason: str, *, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


class RecordingNotReady(RecordingError):
    """VTS answered 404: the file is not there yet (it often is a little later)."""


class RecordingUnavailable(RecordingError):
    """A network error, a 5xx/408/425/429 or an incomplete body: try again later.

    ``retry_after`` is the host's ``Retry-After`` in seconds, when it gave one.
    """

    def __init__(
        self, reason: str, *, status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(reason, status=status)
        self.retry_after = retry_after


class RecordingRejected(RecordingError):
    """Refused by policy or by the host (other 4xx): retrying will not help."""


class StorageError(ServiceError):
    """Recording storage failed at an operation. ``reason`` is what failed, safe to log
    and to count: an errno name (``EACCES``) or an S3 error code, never a path or a key."""

    def __init__(self, backend: str, operation: str, reason: str) -> None:
        super().__init__(f"{backend} storage failed to {operation}: {reason}")
        self.backend = backend
        self.reason = reason


class StorageUnavailable(StorageError):
    """Storage cannot take or give objects for now (a full or read-only disk, an S3
    endpoint refusing connections, a 5xx, throttling): it comes back by itself or by an
    operator's hand, so try again later."""
