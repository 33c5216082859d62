"""``masking apps``: the operator's view of apps, their keys and notification secrets.

A new key is printed once and never again (only its digest is stored). Notification
secrets are shown on request: the app needs them to verify what we send it.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from service.apps import InvalidAppName
from service.store.apps import AppRecord, AppStore, TooManyKeys, UnknownApp
from service.store.endpoints import EndpointHealth
from service.tools.terminal import printable


def run(
    store: AppStore,
    args: argparse.Namespace,
    out: TextIO,
    err: TextIO,
    endpoints: EndpointHealth | None = None,
) -> int:
    """Carry out ``args.action``, printing to ``out`` (refusals to ``err``, one line);
    return the exit status (2 for a refusal)."""
    try:
        if args.action == "list":
            records = store.all()
            lines = "".join(printable(_summary(record)) + "\n" for record in records)
            out.write(lines or "no apps\n")
        elif args.action == "enable":
            return _enable(store, endpoints or EndpointHealth(store.client), args.name, out)
        elif args.action == "create":
            key, key_id = store.create_key(args.name)
            out.write(printable(f"app {args.name}: new key {key_id}") + f"\n{key}\n")
            out.write("the key is shown only now: hand it to the app, it cannot be read back\n")
        elif args.action == "revoke":
            return _revoke(store, args, out, err)
        else:
            out.write("\n".join(_secrets(store, args)) + "\n")
    except (InvalidAppName, TooManyKeys, UnknownApp) as exc:
        # A refusal is a usage error, like every other command's: one line, status 2.
        err.write(printable(f"masking apps: {exc}") + "\n")
        return 2
    return 0


def _revoke(store: AppStore, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if args.app:
        revoked = store.revoke_app(args.app)
        missing = f"app {args.app} has no managed key (see: masking apps list)"
    else:
        revoked = store.revoke_key(args.key_id)
        missing = (
            f"no managed key with id {args.key_id} (see: masking apps list); to revoke "
            f"every key of an app: masking apps revoke --app {args.key_id}"
        )
    if not revoked:
        err.write(printable(f"masking apps: {missing}") + "\n")
        return 2
    out.write(printable(f"revoked {', '.join(revoked)}; refused within seconds") + "\n")
    return 0


def _enable(store: AppStore, endpoints: EndpointHealth, name: str, out: TextIO) -> int:
    """Enable the app's disabled notification endpoints (their records stay ``failed``:
    ``masking notifications recover`` sends them)."""
    if store.get(name) is None:
        raise UnknownApp(f"no app named {name} (see: masking apps list)")
    enabled = endpoints.enable(name)
    if not enabled:
        out.write(f"app {name} has no disabled endpoint\n")
    else:
        out.write(f"enabled {', '.join(enabled)} for app {name}; to send what failed: "
                  f"masking notifications recover --app {name} --since TIME\n")  # fmt: skip
    return 0


def _summary(record: AppRecord) -> str:
    keys = ", ".join(record.key_ids) or "none"
    return (
        f"{record.name:<32} {record.source:<8} created {record.created_at}  "
        f"managed keys: {keys}  notification secrets: {len(record.notification_secrets)}"
    )


def _secrets(store: AppStore, args: argparse.Namespace) -> list[str]:
    record: AppRecord | None
    if args.rotate:
        record = store.rotate_secret(args.name)
    elif args.drop_previous:
        record = store.drop_previous_secret(args.name)
    else:
        record = store.get(args.name)
        if record is None:
            raise UnknownApp(f"no app named {args.name} (see: masking apps list)")
    labels = ["current ", "previous"][: len(record.notification_secrets)]
    return [
        f"{label} {secret}"
        for label, secret in zip(labels, record.notification_secrets, strict=True)
    ]
