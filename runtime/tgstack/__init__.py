"""tgstack: Telegram channel ingestion stack runtime."""

__version__ = "0.1.0"
