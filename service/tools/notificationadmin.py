"""``masking notifications``: the operator's view of the notifications sent to apps, their
attempts, and redelivery and recovery (the same as apps have through the API, for any
app). What it prints never holds a phone number: records hold ids, states and statuses.
"""

from __future__ import annotations

import argparse
import json
from typing import TextIO

import msgspec

from service.store.notifications import Notification, NotificationStore, RequeueResult


def run(store: NotificationStore, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """Carry out ``args.action``, printing to ``out`` (refusals to ``err``); return the
    exit status."""
    if args.action == "list":
        lines = [_summary(record) + "\n" for record in _listed(store, args)]
        out.write("".join(lines) or "no notifications\n")
    elif args.action == "show":
        record = store.get(args.id)
        if record is None:
            err.write(f"no notification {args.id} (see: masking notifications list)\n")
            return 1
        out.write(_details(record) + "\n")
    elif args.action == "redeliver":
        if store.requeue(args.id) is not RequeueResult.QUEUED:
            err.write(f"no notification {args.id} (see: masking notifications list)\n")
            return 1
        out.write(f"queued {args.id} for an attempt now (same webhook-id)\n")
    else:
        count = store.recover(args.app, args.since)
        out.write(f"queued {count} notifications of {args.app} again\n")
    return 0


def _listed(store: NotificationStore, args: argparse.Namespace) -> list[Notification]:
    if args.session:
        records = store.for_session(args.session)
    else:
        apps = [args.app] if args.app else store.apps()
        records = [r for app in apps for r in store.records(store.app_ids(app))]
        records.sort(key=lambda record: record.created_at)
    return [
        record
        for record in records
        if (not args.app or record.app == args.app)
        and (not args.state or record.state.value == args.state)
    ]


def _summary(record: Notification) -> str:
    last = record.attempts[-1] if record.attempts else None
    outcome = (str(last.status) if last.status else last.error or "?") if last else "-"
    return (
        f"{record.id}  {record.app:<16} {record.state.value:<9} {record.type:<25} "
        f"created {record.created_at}  attempts={len(record.attempts)} last={outcome}  "
        f"next={record.next_attempt_at or '-'}"
    )


def _details(record: Notification) -> str:
    shown = {
        "id": record.id,
        "type": record.type,
        "app": record.app,
        "session_id": record.session_id,
        "created_at": record.created_at,
        "state": record.state.value,
        "next_attempt_at": record.next_attempt_at,
        "attempts": msgspec.to_builtins(record.attempts),
    }
    return json.dumps(shown, indent=2)
