"""The prefix every key of the service starts with, shared by the store's concept modules
(each of which owns the names of its own keys)."""

PREFIX = "masking:"
