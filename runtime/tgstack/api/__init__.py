"""The Gateway API (``tgstack api``): a read API over messages, channels and signals.

``app`` is the WSGI application (routing, auth, rate limit, cache, errors, metrics),
``server`` serves it with waitress and shuts down gracefully; the other modules each do one
job for them (see docs/api.md).
"""
