"""The HTTP front: the ASGI app, its routes for apps and for VTS, and what they share.

The web never imports ``workers``; both build on the core modules of ``service``.
"""
