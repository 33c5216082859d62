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
