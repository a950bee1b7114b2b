"""Test tooling for tgstack that never ships: servers and fakes used only by tests and demos."""
