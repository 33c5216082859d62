"""The store's Lua scripts, each in a ``.lua`` file beside this module that says what its
KEYS are, what its arguments are and what it returns. Keys stay positional (Redis must be
told which keys a script touches), each named at the top of the script; the arguments
are one JSON object (ARGV[1], encoded with msgspec) read by name, except in the few
scripts of one to three documented ARGV slots. Logic several scripts share (the app
budget's functions, recording a notification) lives in a file of its own, put ahead of
the scripts that use it."""

from functools import cache
from importlib import resources


def source(*names: str) -> str:
    """The text of the scripts ``names`` (e.g. ``"budget.lua", "create.lua"``), in order."""
    return "\n".join(_read(name) for name in names)


@cache
def _read(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
