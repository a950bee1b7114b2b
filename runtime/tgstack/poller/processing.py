"""What to do with one message: a pure decision, no I/O."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from tgstack.models import MessageKey, StoredMessage
from tgstack.signals import Signal, parse_signal

ResultState = Literal["processed", "ignored", "failed"]


@dataclass(frozen=True, slots=True)
class ProcessingResult:
    key: MessageKey
    state: ResultState
    signal: Signal | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The form tp_capital.apply_processing_results takes; prices as exact strings."""
        signal = None
        if self.signal is not None:
            signal = {
                name: str(value) if isinstance(value, Decimal) else value
                for name, value in (
                    ("asset", self.signal.asset),
                    ("signal_type", self.signal.signal_type),
                    ("buy_min", self.signal.buy_min),
                    ("buy_max", self.signal.buy_max),
                    ("target_1", self.signal.target_1),
                    ("target_2", self.signal.target_2),
                    ("target_final", self.signal.target_final),
                    ("stop", self.signal.stop),
                )
            }
        return {
            "channel_id": self.key.channel_id,
            "message_id": self.key.message_id,
            "state": self.state,
            "error": self.error,
            "signal": signal,
        }


def decide(message: StoredMessage) -> ProcessingResult:
    """A signal post is processed with its signal; anything else is ignored."""
    signal = parse_signal(message.record.body)
    if signal is None:
        return ProcessingResult(message.key, "ignored")
    return ProcessingResult(message.key, "processed", signal)


def failed(key: MessageKey, error: str) -> ProcessingResult:
    return ProcessingResult(key, "failed", error=error[:2000])
