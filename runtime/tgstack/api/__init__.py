"""The Gateway API (``tgstack api``): a read API over messages, channels and signals.

FastAPI with sync operations, served by uvicorn: ``app`` builds the application (errors,
metrics, logs), ``routes`` holds the operations, ``schemas`` their parameter and response
models, ``deps`` the dependencies (auth, rate limit, query checks, cache, bodies), ``server``
serves it and shuts down gracefully; the other modules each do one job for them (see
docs/api.md).
"""
