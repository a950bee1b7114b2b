"""The unit tier (``make test-unit``): pure tests, no server started, nothing installed by apt.

Every server fixture of tests/conftest.py starts from ``server_root``; here it fails instead, so
a unit test that asks for a server (directly or through another fixture) fails with a message
that says where it belongs, rather than quietly making the fast loop slow.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def server_root() -> None:
    pytest.fail("a unit test starts no server: a test that needs one belongs in tests/integration")
