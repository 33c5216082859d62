"""The Lua scripts that cross the store's concepts (applying an event, a transition,
storing a recording), put together from their ``.lua`` files beside this module with what
they share: VTS's event vocabulary, the notification recorder (``notify.lua``) and the
status change (``status.lua``).
Everything that changes several keys together does it in one script, so a crash can never
leave half a change behind."""

from service.store.lua import source as _load
from service.store.notifications import RECORD_NOTIFICATION
from service.vts.callbacks import ROLES, party_of


def _events_table() -> str:
    """VTS's event vocabulary as the apply script's ``EVENTS`` table: name -> {role,
    party}, from the one place that defines it."""
    rows = (f"  ['{name}'] = {{'{role}', '{party_of(name)}'}}," for name, role in ROLES.items())
    return "\n".join(["local EVENTS = {", *rows, "}"])


APPLY_EVENT = "\n".join(
    [_events_table(), RECORD_NOTIFICATION, _load("status.lua", "apply_event.lua")]
)
TRANSITION = "\n".join([RECORD_NOTIFICATION, _load("status.lua", "transition.lua")])
RECORDING_STORED = "\n".join([RECORD_NOTIFICATION, _load("recording_stored.lua")])
