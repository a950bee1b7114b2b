"""Test tooling for tgstack that never ships: servers and fakes used only by tests and demos.

``localstack`` starts real servers (PostgreSQL, PgBouncer, Redis + Sentinel, RabbitMQ) on free
loopback ports, ``legacy`` makes the legacy table and its fixture rows, ``telegram`` is the local
MTProto server. Not in the wheel: the runtime imports it only inside the commands that need it
(``tgstack loadtest --local``, ``tgstack legacy seed``), through ``tgstack.testing_tools``.
"""
