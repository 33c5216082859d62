"""A faithful stand-in for the VTS Number Masking API: sessions, calls, callbacks and
recordings, for development and tests (``python -m devkit.sandbox.server``)."""
