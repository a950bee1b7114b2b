"""The poller's queue thread and poll loop claim under distinct names."""

from __future__ import annotations

from tgstack.config import Settings
from tgstack.poller.service import PollerService


def test_the_queue_and_the_safety_poll_claim_under_names_of_their_own() -> None:
    settings = Settings(
        database_url="host=127.0.0.1 port=1 dbname=x user=x",  # type: ignore[arg-type]
        amqp_url="amqp://u:p@127.0.0.1:1/telegram",  # type: ignore[arg-type]
    ).model_copy(update={"poller_port": 0})
    service = PollerService(settings, "hybrid")
    service.health.start()  # so that stop() can shut it down
    try:
        names = {service.worker.consumer, service.poll_worker.consumer}
        assert len(names) == 2
        assert service.consumer is not None
        assert service.consumer.worker is service.worker
        assert service.consumer.prefetch == settings.poller_prefetch
    finally:
        service.health.stop()
