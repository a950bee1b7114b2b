"""Typed settings from ``TGSTACK_*`` environment variables and an optional env file.

The env file is the form Ansible deploys (``KEY=value`` lines, mode 0600). Every value is
validated when loaded; an invalid one raises ``ConfigError`` whose message names the variable,
which the CLI prints as one line before exiting with status 2.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tgstack.models import InvalidMessage, validate_channel_id

ENV_PREFIX = "TGSTACK_"
ENV_FILE_VARIABLE = "TGSTACK_ENV_FILE"
# A gateway account's name: a systemd instance name and a file name as it is (tgstack-gateway@NAME,
# gateway-NAME.env), and a Prometheus label value.
ACCOUNT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
# An API bearer token: visible ASCII (RFC 6750 b64token and more), no comma (the separator).
_API_TOKEN = re.compile(r"[\x21-\x2b\x2d-\x7e]{16,512}")


class ConfigError(ValueError):
    """A setting is missing or invalid; the message starts with the variable's name."""


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _check_dsn(value: str) -> str:
    from psycopg import conninfo

    try:
        parts = conninfo.conninfo_to_dict(value)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"not a valid PostgreSQL connection string ({reason})") from None
    if not parts.get("host") and not parts.get("hostaddr"):
        raise ValueError("the connection string names no host")
    if not parts.get("dbname"):
        raise ValueError("the connection string names no database")
    port = str(parts.get("port", "5432"))
    if not all(p.isdigit() and 0 < int(p) < 65536 for p in port.split(",")):
        raise ValueError(f"the connection string has an invalid port {port!r}")
    return value


def _check_host_port(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not host:port")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} has no valid port")
    return host.strip("[]"), int(port)


class Settings(BaseSettings):
    """Everything a tgstack process reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        case_sensitive=False,
        env_file_encoding="utf-8",
    )

    database_url: SecretStr | None = Field(
        default=None, description="DSN the runtime uses, normally through PgBouncer"
    )
    database_admin_url: SecretStr | None = Field(
        default=None,
        description="DSN straight to PostgreSQL for migrations (default: database_url)",
    )
    database_pool_min: int = Field(default=1, ge=0, le=100)
    database_pool_max: int = Field(default=10, ge=1, le=100)
    database_prepared_statements: bool = Field(
        default=False,
        description="Use server-side prepared statements (PgBouncer >= 1.22 with "
        "max_prepared_statements only)",
    )

    redis_url: SecretStr | None = Field(default=None, description="redis:// or rediss:// URL")
    redis_sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="host:port of each Sentinel, comma separated"
    )
    redis_master_name: str = Field(default="tgstack", min_length=1)
    redis_password: SecretStr | None = None
    redis_sentinel_password: SecretStr | None = None
    redis_socket_timeout: float = Field(default=0.5, gt=0, le=30)

    amqp_url: SecretStr | None = Field(default=None, description="amqp:// or amqps:// URL")

    channels: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="marked channel ids (-100…), comma separated"
    )

    telegram_api_id: int | None = Field(default=None, ge=1, description="from my.telegram.org")
    telegram_api_hash: SecretStr | None = Field(default=None, description="from my.telegram.org")
    telegram_session: Path = Field(
        default=Path("/var/lib/tgstack/gateway.session"),
        description="the Telethon session file written by `tgstack login` (mode 0600)",
    )
    telegram_server: str | None = Field(
        default=None,
        description="host:port of an MTProto server to use instead of Telegram's own (the "
        "local test server of the sandbox); unset in production",
    )
    telegram_server_dc: int = Field(
        default=2, ge=1, le=5, description="the data-center id telegram_server answers as"
    )
    telegram_server_rsa_key: Path | None = Field(
        default=None,
        description="PEM public key of telegram_server, trusted for the auth-key exchange",
    )

    gateway_account: str = Field(
        default="main",
        pattern=ACCOUNT_NAME_PATTERN,
        description="name of the Telegram account this gateway signs in as (one gateway per "
        "account; it labels the gateway's /health and metrics)",
    )
    gateway_source: Literal["telethon", "spool"] = Field(
        default="telethon",
        description="where `tgstack gateway` reads posts: telethon (a Telegram account) or "
        "spool (JSONL files dropped into gateway_spool_dir: the sandbox's stand-in)",
    )
    gateway_spool_dir: Path = Field(
        default=Path("/var/lib/tgstack/spool"),
        description="directory of *.jsonl files (replay format) the spool source follows",
    )
    gateway_spool_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    gateway_bind: str = "127.0.0.1"
    gateway_port: int = Field(default=4006, ge=1, le=65535)
    gateway_batch_size: int = Field(default=500, ge=1, le=10_000)
    gateway_batch_delay_ms: int = Field(
        default=0,
        ge=0,
        le=10_000,
        description="longest wait for a micro-batch to fill; 0: take what is queued, so a "
        "batch is what arrived while the last one was committed (at 100 posts/s the 50 ms "
        "wait was most of the end-to-end latency; at 2,000/s batches fill anyway)",
    )
    gateway_backfill_interval_seconds: int = Field(default=300, ge=10)
    # 10,000 ids: 100 getHistory pages (under a minute at the history gate's 2 a second) the
    # first time a channel is followed, which is months of a signal channel (~50 posts a day):
    # the poller acts on recent signals, and older ones reach it only as history nobody trades
    # on.
    gateway_backfill_depth: int = Field(
        default=10_000,
        ge=0,
        le=2_147_483_647,
        description="how far back the first backfill of a channel reaches: posts more than this "
        "many ids below its newest one are never fetched (0: the whole history). Set once per "
        "channel (its floor); later backfills fill every hole above it, however large",
    )
    # 200 ids: two getHistory pages per channel per round, four days of a channel posting ~50 a
    # day, where a signal's edits (targets hit, stop moved) happen; 500 channels reconciled
    # every 15 minutes then cost about one request a second. After a gap, the first round also
    # reaches this many ids below the watermark the gap began at (posts edited while down).
    gateway_reconcile_window: int = Field(
        default=200,
        ge=0,
        le=100_000,
        description="how many of each channel's newest ids are read again to apply edits and "
        "deletions the gateway missed (0: no reconciliation)",
    )
    gateway_reconcile_interval_seconds: int = Field(
        default=900,
        ge=10,
        description="seconds between reconciliations; one also runs after the first backfill "
        "at start and after each catch-up (a reconnect)",
    )
    gateway_flood_max_waits: int = Field(
        default=3,
        ge=1,
        le=100,
        description="FloodWaits one Telegram request waits out in place; the next one gives the "
        "call up (its channel is tried again next backfill round) instead of asking again",
    )
    gateway_history_rate: float = Field(
        default=2.0,
        gt=0,
        le=1000,
        description="history requests (getHistory, getMessages) per second for the account, a "
        "token bucket: 500 channels (an account's limit) in 250 s, inside one backfill round; "
        "twice Telethon's own 1/s for long reads (tgstack.gateway.flood)",
    )
    gateway_history_burst: int = Field(
        default=20,
        ge=1,
        le=10_000,
        description="history requests the token bucket lets through at once",
    )
    gateway_queue_limit: int = Field(
        default=10_000,
        ge=10,
        le=1_000_000,
        description="events held in memory waiting for PostgreSQL; when full, new posts are "
        "refused and their channels backfilled later, edits and deletions spilled to disk. "
        "Measured (tracemalloc): 1.0 KB an event for a 92-character signal, 4.6 KB for 1,000 "
        "characters with an emoji, 17 KB for 4,096; 10,000 events stay under 170 MB of the "
        "unit's 512 MB even then, and hold 100 s of the seed's 100 posts/s spike",
    )
    gateway_state_dir: Path | None = Field(
        default=None,
        description="where the gateway keeps the edits and deletions spilled while its queue "
        "was full and the channels due a backfill (default: gateway-ACCOUNT.state beside "
        "telegram_session)",
    )
    gateway_outbox_interval_seconds: float = Field(default=5.0, gt=0, le=3600)

    api_bind: str = Field(default="127.0.0.1", description="address `tgstack api` listens on")
    api_port: int = Field(default=4010, ge=1, le=65535)
    api_read_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="bearer tokens that may read, comma separated (16+ visible ASCII chars)",
    )
    api_admin_tokens: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="bearer tokens that may also create/update/deactivate channels",
    )
    api_rate_limit_per_second: float = Field(
        default=20.0, gt=0, le=100_000, description="token refill rate per token/client address"
    )
    api_rate_limit_burst: int = Field(default=40, ge=1, le=1_000_000)
    api_cache_ttl_seconds: int = Field(
        default=30, ge=0, le=3600, description="Redis response cache TTL (0 turns it off)"
    )
    api_threads: int = Field(default=8, ge=1, le=64)
    api_max_body_bytes: int = Field(default=16_384, ge=256, le=1_048_576)
    api_statement_timeout_ms: int = Field(default=5_000, ge=100, le=600_000)
    api_shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=300)

    poller_consumer: str = Field(default="tp-capital", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    poller_bind: str = "127.0.0.1"
    poller_port: int = Field(default=4007, ge=1, le=65535)
    poller_batch_size: int = Field(default=100, ge=1, le=1000)
    poller_prefetch: int = Field(
        default=100,
        ge=1,
        le=1000,
        description="RabbitMQ deliveries a poller holds unacknowledged (its largest batch)",
    )
    poller_lease_seconds: int = Field(default=60, ge=5, le=3600)
    poller_poll_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    poller_safety_poll_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Two weeks: a swing trade's follow-ups come days after it; a day trade's the same day,
    # and an older signal of the asset that is still open is the one meant anyway.
    poller_signal_link_window_hours: float = Field(
        default=336,
        gt=0,
        le=8784,
        description="how far back a follow-up that names its asset but replies to no post looks "
        "for the signal it follows (the most recent one still open)",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("database_url", "database_admin_url", mode="after")
    @classmethod
    def _valid_dsn(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_dsn(value.get_secret_value())
        return value

    @field_validator("redis_url", mode="after")
    @classmethod
    def _valid_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must start with redis://, rediss:// or unix://")
        if parts.scheme != "unix" and not parts.hostname:
            raise ValueError("names no host")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError:
            raise ValueError("has an invalid port") from None
        return value

    @field_validator("telegram_server", mode="after")
    @classmethod
    def _valid_telegram_server(cls, value: str | None) -> str | None:
        if value is not None:
            _check_host_port(value)
        return value

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("redis_sentinels", mode="after")
    @classmethod
    def _valid_sentinels(cls, value: list[str]) -> list[str]:
        for item in value:
            _check_host_port(item)
        return value

    @field_validator("amqp_url", mode="after")
    @classmethod
    def _valid_amqp_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("amqp", "amqps"):
            raise ValueError("must start with amqp:// or amqps://")
        if not parts.hostname:
            raise ValueError("names no host")
        try:
            parts.port  # noqa: B018
        except ValueError:
            raise ValueError("has an invalid port") from None
        return value

    @field_validator("channels", mode="before")
    @classmethod
    def _split_channels(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("channels", mode="after")
    @classmethod
    def _marked_channels(cls, value: list[int]) -> list[int]:
        for channel in value:
            try:
                validate_channel_id(channel, field_name="channel id")
            except InvalidMessage as exc:
                raise ValueError(str(exc)) from None
        if len(set(value)) != len(value):
            raise ValueError("lists a channel more than once")
        return value

    @field_validator("api_read_tokens", "api_admin_tokens", mode="before")
    @classmethod
    def _split_tokens(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("api_read_tokens", "api_admin_tokens", mode="after")
    @classmethod
    def _valid_tokens(cls, value: list[SecretStr]) -> list[SecretStr]:
        for position, token in enumerate(value, start=1):
            if not _API_TOKEN.fullmatch(token.get_secret_value()):
                raise ValueError(
                    f"token {position} must be at least 16 visible ASCII characters "
                    "(no spaces or commas)"
                )
        return value

    # Accessors that say which variable is missing -------------------------------------

    def require_database_url(self) -> str:
        return _required(self.database_url, "database_url")

    def migration_database_url(self) -> str:
        if self.database_admin_url is not None:
            return self.database_admin_url.get_secret_value()
        return self.require_database_url()

    def require_amqp_url(self) -> str:
        return _required(self.amqp_url, "amqp_url")

    def require_telegram_credentials(self) -> tuple[int, str]:
        if self.telegram_api_id is None:
            raise ConfigError(f"{env_name('telegram_api_id')}: is required but not set")
        return self.telegram_api_id, _required(self.telegram_api_hash, "telegram_api_hash")

    def telegram_endpoint(self) -> tuple[str, int, Path] | None:
        """(host, port, RSA key) of a non-Telegram MTProto server, or None for Telegram's own."""
        if self.telegram_server is None:
            return None
        if self.telegram_server_rsa_key is None:
            raise ConfigError(
                f"{env_name('telegram_server_rsa_key')}: is required when "
                f"{env_name('telegram_server')} is set"
            )
        host, port = _check_host_port(self.telegram_server)
        return host, port, self.telegram_server_rsa_key

    def gateway_state_path(self) -> Path:
        """The gateway's state directory: gateway_state_dir, else ``gateway-ACCOUNT.state``
        beside the session (each account's gateway has its own spill and marks)."""
        if self.gateway_state_dir is not None:
            return self.gateway_state_dir
        return self.telegram_session.parent / f"gateway-{self.gateway_account}.state"

    def require_channels(self) -> list[int]:
        if not self.channels:
            raise ConfigError(f"{env_name('channels')}: lists no channel to follow")
        return self.channels

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [_check_host_port(item) for item in self.redis_sentinels]

    @property
    def redis_configured(self) -> bool:
        return self.redis_url is not None or bool(self.redis_sentinels)

    def redacted(self) -> dict[str, Any]:
        """The settings with every secret and URL password masked, for display."""
        shown: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if isinstance(value, SecretStr):
                shown[name] = _redact(value.get_secret_value(), name)
            else:
                shown[name] = value
        return shown


def _required(value: SecretStr | None, name: str) -> str:
    if value is None:
        raise ConfigError(f"{env_name(name)}: is required for this command but not set")
    return value.get_secret_value()


def _redact(secret: str, name: str) -> str:
    if name.endswith("_url"):
        parts = urlsplit(secret)
        if parts.scheme and parts.password:
            return secret.replace(f":{parts.password}@", ":***@", 1)
        if "password=" in secret:
            return " ".join(
                "password=***" if item.startswith("password=") else item for item in secret.split()
            )
        return secret
    return "***"


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _format_validation_error(error: ValidationError) -> str:
    first = error.errors()[0]
    location = first.get("loc") or ("?",)
    name = env_name(str(location[0]))
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{name}: {message}"


def check_env_file(path: Path) -> None:
    """Refuse an env file that is missing or readable by other users (it holds secrets)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{ENV_FILE_VARIABLE}: env file {path} does not exist") from None
    except PermissionError:
        raise ConfigError(f"{ENV_FILE_VARIABLE}: env file {path} is not readable") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{ENV_FILE_VARIABLE}: env file {path} holds secrets and must not be readable by "
            f"group or others (mode {stat.S_IMODE(mode):04o}; run chmod 600)"
        )


def account_env_file(env_file: Path, account: str) -> Path:
    """The env file of one gateway account: ``gateway-NAME.env`` beside the main env file."""
    if re.fullmatch(ACCOUNT_NAME_PATTERN, account) is None:
        raise ConfigError(
            f"--account: {account!r} is not an account name (lower-case letters, digits, _ and -, "
            "at most 32, starting with a letter or digit)"
        )
    return env_file.with_name(f"gateway-{account}.env")


def load_settings(
    env_file: str | os.PathLike[str] | None = None, account: str | None = None
) -> Settings:
    """Read and validate the settings; raise ConfigError naming the first bad variable.

    With ``account``, that gateway account's env file (its channels, session and port) is read
    on top of the main one, and ``gateway_account`` is the account's name.
    """
    path = env_file if env_file is not None else os.environ.get(ENV_FILE_VARIABLE)
    file_path = Path(path) if path else None
    files: list[Path] = []
    if file_path is not None:
        check_env_file(file_path)
        files.append(file_path)
    overrides: dict[str, Any] = {}
    if account is not None:
        if file_path is None:
            raise ConfigError(f"--account needs the main env file: set {ENV_FILE_VARIABLE}")
        account_file = account_env_file(file_path, account)
        try:
            check_env_file(account_file)
        except ConfigError as exc:
            raise ConfigError(f"--account {account}: {exc}") from None
        files.append(account_file)
        overrides["gateway_account"] = account
    try:
        return Settings(_env_file=tuple(files) or None, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc)) from None
