"""The legacy ``telegram_gateway`` table for tests and the sandbox: its DDL and fixture rows.

``schema`` creates the table as the old shared database had it (the runtime's ``tgstack.legacy``
only reads an existing one), ``seed`` fills it with realistic rows (``tgstack legacy seed``, the
integration tests, the Molecule ``rollback`` scenario).
"""
