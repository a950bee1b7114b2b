"""The legacy ``telegram_gateway`` schema of the old shared database, and moving its rows.

``mapping`` turns one legacy row into one row of the new schema (pure functions),
``source`` reads the legacy table (one row per message, duplicates folded), ``importer``
writes the new schema idempotently, ``verify`` compares both sides per channel (counts and
checksums) and fingerprints the legacy table, and ``carry`` copies rows the new stack stored
after the migration back into the legacy table (rollback). The legacy DDL and the fixture rows
of ``tgstack legacy seed`` are test tooling (``tgstack_testing.legacy``), not in the wheel.
"""
