"""The store's Lua scripts, each in a ``.lua`` file beside this module that says what its
KEYS and ARGV are (or the named arguments of its one JSON argument) and what it returns."""

from functools import cache
from importlib import resources


@cache
def source(name: str) -> str:
    """The text of the script ``name`` (e.g. ``"take_due.lua"``)."""
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
