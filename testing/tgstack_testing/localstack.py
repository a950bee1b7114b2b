"""Real servers from Debian packages on free loopback ports, for tests, benchmarks and demos.

Test tooling, not in the wheel: the test fixtures (tests/conftest.py), the benchmarks and
``tgstack loadtest --local`` (which imports it when it runs) start their servers here.

Every server is a child process in its own session, with its data under one base directory,
so a test can stop, kill -9 or restart it and tear it all down afterwards. PostgreSQL and
PgBouncer refuse to run as root; when we are root they run as the ``postgres`` system user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

# Re-exported: the tests take both from here.
from tgstack.loadtest.ports import LOOPBACK as LOOPBACK
from tgstack.loadtest.ports import free_port as free_port


class LocalStackError(RuntimeError):
    """A local server could not be found, started or reached."""


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if condition():
                return
        time.sleep(interval)
    raise LocalStackError(f"timed out after {timeout:.0f}s waiting for {what}")


def _service_user() -> str | None:
    """The unprivileged user to run PostgreSQL/PgBouncer as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError as exc:
        raise LocalStackError("running as root needs the 'postgres' system user") from exc
    return "postgres"


def _chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)


def _make_traversable(path: Path) -> None:
    """Let the service user reach a directory made under a private temp dir (mode 0700)."""
    for parent in [path, *path.parents]:
        if parent == Path("/"):
            break
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)


def postgres_bin_dir() -> Path:
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parent.parent.name),
    )
    if not candidates:
        raise LocalStackError("PostgreSQL server binaries not found (apt-get install postgresql)")
    return Path(candidates[-1]).parent


def require_binary(name: str, package: str) -> str:
    found = shutil.which(name)
    if not found:
        raise LocalStackError(f"{name} not found (apt-get install {package})")
    return found


@dataclass
class ManagedProcess:
    """A server child process that can be stopped gently, killed, and started again."""

    name: str
    argv: list[str]
    log_path: Path
    user: str | None = None
    env: dict[str, str] | None = None
    stop_signal: int = signal.SIGTERM
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        if self.running:
            return
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                user=self.user,
                group=self.user,
                extra_groups=[] if self.user else None,
                env=self.env,
                start_new_session=True,
                cwd=self.log_path.parent,
            )
        finally:
            log.close()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        self._signal_group(self.stop_signal)
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._signal_group(signal.SIGKILL)  # stray children such as epmd
        self.proc = None

    def kill(self) -> None:
        self._signal_group(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
        self.proc = None

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def tail_log(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


# The WAL and checkpoint tuning of the deployed server (roles/tgstack_stack/templates/postgres/
# postgresql.conf.j2), so that a durable local server (benchmarks) writes as production does.
PRODUCTION_WAL_SETTINGS = {
    "wal_compression": "on",
    "wal_buffers": "16MB",
    "min_wal_size": "512MB",
    "checkpoint_timeout": "15min",
    "checkpoint_completion_target": "0.9",
    "random_page_cost": "1.1",
    "effective_io_concurrency": "200",
}


class PostgresServer:
    """A throwaway PostgreSQL cluster with SCRAM auth on a loopback port."""

    def __init__(self, base_dir: Path, *, port: int | None = None, durable: bool = False) -> None:
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.port = port or free_port()
        self.superuser = "postgres"
        self.superuser_password = secrets.token_urlsafe(18)
        self.durable = durable
        self.user = _service_user()
        bindir = postgres_bin_dir()
        self._bindir = bindir
        self.process = ManagedProcess(
            "postgres",
            [str(bindir / "postgres"), "-D", str(self.data_dir)],
            base_dir / "postgres.log",
            user=self.user,
            stop_signal=signal.SIGINT,  # "fast" shutdown: do not wait for pooled clients
        )

    def init(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self.user is not None:
            _make_traversable(self.base_dir)
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.superuser_password + "\n")
        pwfile.chmod(0o600)
        _chown_tree(self.base_dir, self.user)
        subprocess.run(
            [
                str(self._bindir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.superuser,
                "--pwfile",
                str(pwfile),
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
            check=True,
            capture_output=True,
            user=self.user,
            group=self.user,
            extra_groups=[] if self.user else None,
        )
        pwfile.unlink()
        settings = {
            "listen_addresses": f"'{LOOPBACK}'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.base_dir}'",
            "max_connections": "200",
            "shared_buffers": "256MB",
            "work_mem": "16MB",
            "maintenance_work_mem": "256MB",
            "max_wal_size": "2GB",
            "log_min_messages": "warning",
            "password_encryption": "'scram-sha-256'",
        }
        if self.durable:
            settings |= PRODUCTION_WAL_SETTINGS
        else:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        with (self.data_dir / "postgresql.auto.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())

    def start(self, timeout: float = 30.0) -> None:
        if self.user is not None:
            _make_traversable(self.base_dir)  # another pytest run may have reset a parent
        self.process.start()
        try:
            wait_until(self._accepts, timeout, f"PostgreSQL on port {self.port}")
        except LocalStackError as exc:
            raise LocalStackError(f"{exc}\n{self.process.tail_log()}") from exc

    def _accepts(self) -> bool:
        import psycopg

        with psycopg.connect(self.superuser_dsn(), connect_timeout=1):
            return True

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def superuser_dsn(self, dbname: str = "postgres") -> str:
        return dsn(LOOPBACK, self.port, self.superuser, self.superuser_password, dbname)

    def execute(self, sql: str, dbname: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.superuser_dsn(dbname), autocommit=True) as conn:
            conn.execute(sql)

    def create_role(self, name: str, password: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.superuser_dsn(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)).fetchone()
            verb = "ALTER" if exists else "CREATE"
            conn.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(name), sql.Literal(password)
                )
            )

    def create_database(self, name: str, owner: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.superuser_dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(owner)
                )
            )

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.superuser_dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def scram_verifier(self, role: str) -> str:
        import psycopg

        with psycopg.connect(self.superuser_dsn()) as conn:
            row = conn.execute(
                "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (role,)
            ).fetchone()
        if row is None or not str(row[0]).startswith("SCRAM-SHA-256$"):
            raise LocalStackError(f"role {role} has no SCRAM verifier")
        return str(row[0])


def dsn(host: str, port: int, user: str, password: str, dbname: str) -> str:
    from psycopg.conninfo import make_conninfo

    return make_conninfo(host=host, port=port, user=user, password=password, dbname=dbname)


class PgBouncerServer:
    """PgBouncer in transaction pooling mode, authenticating clients with SCRAM verifiers."""

    def __init__(
        self,
        base_dir: Path,
        postgres: PostgresServer,
        *,
        port: int | None = None,
        default_pool_size: int = 20,
        max_client_conn: int = 100,
    ) -> None:
        self.base_dir = base_dir
        self.postgres = postgres
        self.port = port or free_port()
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.user = _service_user()
        self.users: dict[str, str] = {}
        self.databases: dict[str, str] = {}
        self.admin_user = "pgbouncer_admin"
        self.admin_password = secrets.token_urlsafe(18)
        self.process = ManagedProcess(
            "pgbouncer",
            [require_binary("pgbouncer", "pgbouncer"), str(base_dir / "pgbouncer.ini")],
            base_dir / "pgbouncer.log",
            user=self.user,
        )

    def add_database(self, name: str) -> None:
        self.databases[name] = f"host={LOOPBACK} port={self.postgres.port} dbname={name}"

    def add_fallback_database(self) -> None:
        """Route any database name to the PostgreSQL server (tests create many databases)."""
        self.databases["*"] = f"host={LOOPBACK} port={self.postgres.port}"

    def add_user(self, role: str) -> None:
        self.users[role] = self.postgres.scram_verifier(role)

    def write_config(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        userlist = self.base_dir / "userlist.txt"
        entries = dict(self.users)
        entries[self.admin_user] = self.admin_password
        userlist.write_text("".join(f'"{u}" "{p}"\n' for u, p in entries.items()))
        userlist.chmod(0o600)
        databases = "".join(f"{name} = {spec}\n" for name, spec in self.databases.items())
        (self.base_dir / "pgbouncer.ini").write_text(
            "[databases]\n"
            f"{databases}\n"
            "[pgbouncer]\n"
            f"listen_addr = {LOOPBACK}\n"
            f"listen_port = {self.port}\n"
            f"unix_socket_dir = {self.base_dir}\n"
            "auth_type = scram-sha-256\n"
            f"auth_file = {userlist}\n"
            f"admin_users = {self.admin_user}\n"
            f"stats_users = {self.admin_user}\n"
            "pool_mode = transaction\n"
            f"max_client_conn = {self.max_client_conn}\n"
            f"default_pool_size = {self.default_pool_size}\n"
            "min_pool_size = 5\n"
            "reserve_pool_size = 5\n"
            "reserve_pool_timeout = 3\n"
            "server_reset_query = DISCARD ALL\n"
            "server_check_delay = 5\n"
            "server_login_retry = 1\n"
            "ignore_startup_parameters = extra_float_digits,options\n"
            f"logfile = {self.base_dir / 'pgbouncer-internal.log'}\n"
            f"pidfile = {self.base_dir / 'pgbouncer.pid'}\n"
        )
        _chown_tree(self.base_dir, self.user)

    def start(self, timeout: float = 20.0) -> None:
        self.write_config()
        self.process.start()
        try:
            wait_until(lambda: port_open(self.port), timeout, f"PgBouncer on port {self.port}")
        except LocalStackError as exc:
            raise LocalStackError(f"{exc}\n{self.process.tail_log()}") from exc

    def stop(self) -> None:
        self.process.stop()

    def dsn(self, user: str, password: str, dbname: str) -> str:
        return dsn(LOOPBACK, self.port, user, password, dbname)

    def admin_dsn(self) -> str:
        return dsn(LOOPBACK, self.port, self.admin_user, self.admin_password, "pgbouncer")


class RedisServer:
    """A redis-server (master or replica) with a password and a rewritable config file."""

    def __init__(
        self,
        base_dir: Path,
        password: str,
        *,
        port: int | None = None,
        replica_of: int | None = None,
    ) -> None:
        self.base_dir = base_dir
        self.port = port or free_port()
        self.password = password
        self.replica_of = replica_of
        self.config = base_dir / "redis.conf"
        self.process = ManagedProcess(
            f"redis-{self.port}",
            [require_binary("redis-server", "redis-server"), str(self.config)],
            base_dir / "redis.log",
        )

    def write_config(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"bind {LOOPBACK}",
            f"port {self.port}",
            f"dir {self.base_dir}",
            f"requirepass {self.password}",
            f"masterauth {self.password}",
            "protected-mode yes",
            'save ""',
            "appendonly no",
            "daemonize no",
            "maxmemory 256mb",
            "maxmemory-policy volatile-lru",
        ]
        if self.replica_of is not None:
            lines.append(f"replicaof {LOOPBACK} {self.replica_of}")
        self.config.write_text("\n".join(lines) + "\n")
        self.config.chmod(0o600)

    def start(self, timeout: float = 15.0) -> None:
        if not self.config.exists():
            self.write_config()
        self.process.start()
        wait_until(self.ping, timeout, f"Redis on port {self.port}")

    def ping(self) -> bool:
        import redis

        client = redis.Redis(
            host=LOOPBACK, port=self.port, password=self.password, socket_timeout=1
        )
        try:
            return bool(client.ping())
        finally:
            client.close()

    def client(self) -> object:
        import redis

        return redis.Redis(host=LOOPBACK, port=self.port, password=self.password)

    def stop(self) -> None:
        self.process.stop()

    def kill(self) -> None:
        self.process.kill()


# Sentinel reconnects a link at most once a second. After a switch its link to the promoted
# master may wait that second with the ping clock already running, so a down-after of 1 s
# can declare the new master down at once and fail back to a replica that just restarted.
MIN_SENTINEL_DOWN_AFTER_MS = 2000


class SentinelServer:
    """A redis-sentinel watching one master."""

    def __init__(
        self,
        base_dir: Path,
        master_name: str,
        master_port: int,
        password: str,
        *,
        port: int | None = None,
        quorum: int = 2,
        down_after_ms: int = 5000,
        failover_timeout_ms: int = 10000,
    ) -> None:
        if down_after_ms < MIN_SENTINEL_DOWN_AFTER_MS:
            raise LocalStackError(
                f"down_after_ms {down_after_ms} is below {MIN_SENTINEL_DOWN_AFTER_MS}: Sentinel"
                " could declare a just-promoted master down and fail over a second time"
            )
        self.base_dir = base_dir
        self.port = port or free_port()
        self.master_name = master_name
        self.master_port = master_port
        self.password = password
        self.quorum = quorum
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.config = base_dir / "sentinel.conf"
        self.process = ManagedProcess(
            f"sentinel-{self.port}",
            [require_binary("redis-server", "redis-server"), str(self.config), "--sentinel"],
            base_dir / "sentinel.log",
        )

    def write_config(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        name = self.master_name
        self.config.write_text(
            f"bind {LOOPBACK}\n"
            f"port {self.port}\n"
            f"dir {self.base_dir}\n"
            "daemonize no\n"
            f"sentinel announce-ip {LOOPBACK}\n"
            f"sentinel monitor {name} {LOOPBACK} {self.master_port} {self.quorum}\n"
            f"sentinel auth-pass {name} {self.password}\n"
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}\n"
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}\n"
            f"sentinel parallel-syncs {name} 1\n"
        )
        self.config.chmod(0o600)

    def start(self, timeout: float = 15.0) -> None:
        if not self.config.exists():
            self.write_config()
        self.process.start()
        wait_until(lambda: port_open(self.port), timeout, f"Sentinel on port {self.port}")

    def stop(self) -> None:
        self.process.stop()

    def master_info(self) -> dict[str, object]:
        import redis

        client = redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=1, decode_responses=True)
        try:
            info = client.sentinel_master(self.master_name)
            if not isinstance(info, dict):
                raise LocalStackError(f"Sentinel on port {self.port} does not know the master")
            return info
        finally:
            client.close()


class RedisHA:
    """A Redis master, one replica and three Sentinels (quorum 2), as the stack runs them."""

    def __init__(
        self,
        base_dir: Path,
        *,
        master_name: str = "tgstack",
        down_after_ms: int = 5000,
        failover_timeout_ms: int = 10000,
        sentinels: int = 3,
        quorum: int = 2,
    ) -> None:
        self.password = secrets.token_urlsafe(18)
        self.master_name = master_name
        self.master = RedisServer(base_dir / "master", self.password)
        self.replica = RedisServer(base_dir / "replica", self.password, replica_of=self.master.port)
        self.sentinels = [
            SentinelServer(
                base_dir / f"sentinel-{i}",
                master_name,
                self.master.port,
                self.password,
                quorum=quorum,
                down_after_ms=down_after_ms,
                failover_timeout_ms=failover_timeout_ms,
            )
            for i in range(sentinels)
        ]

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(LOOPBACK, s.port) for s in self.sentinels]

    @property
    def servers(self) -> list[RedisServer]:
        return [self.master, self.replica]

    def start(self, timeout: float = 30.0) -> None:
        self.master.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        others = len(self.sentinels) - 1

        def settled() -> bool:
            for sentinel in self.sentinels:
                info = sentinel.master_info()
                if int(str(info["num-slaves"])) < 1:
                    return False
                if int(str(info["num-other-sentinels"])) < others:
                    return False
            return True

        wait_until(
            settled, timeout, "Sentinels to discover the replica and each other", interval=0.2
        )

    def current_master_port(self) -> int:
        for sentinel in self.sentinels:
            with contextlib.suppress(Exception):
                return int(str(sentinel.master_info()["port"]))
        raise LocalStackError("no Sentinel answered")

    def server_on(self, port: int) -> RedisServer:
        for server in self.servers:
            if server.port == port:
                return server
        raise LocalStackError(f"no Redis server on port {port}")

    def sentinel_events(self, lines: int = 40) -> str:
        """The last lines of each Sentinel's log, for a failed drill's report."""
        return "\n".join(
            f"--- sentinel :{s.port}\n{s.process.tail_log(lines)}" for s in self.sentinels
        )

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers:
            server.stop()


class RabbitMQServer:
    """A single RabbitMQ node with its own Erlang port mapper, cookie and data directory."""

    def __init__(self, base_dir: Path, *, port: int | None = None) -> None:
        self.base_dir = base_dir
        self.port = port or free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.user = "tgstack"
        self.password = secrets.token_urlsafe(18)
        self.vhost = "telegram"
        self.nodename = f"tgstack{self.port}@localhost"
        server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if not os.path.exists(server):
            raise LocalStackError("RabbitMQ not found (apt-get install rabbitmq-server)")
        self.process = ManagedProcess(
            "rabbitmq", [server], base_dir / "rabbitmq.out", env=self._env()
        )

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RABBITMQ_")}
        env.update(
            HOME=str(self.base_dir),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS=LOOPBACK,
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS=LOOPBACK,
            RABBITMQ_MNESIA_BASE=str(self.base_dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base_dir / "log"),
            RABBITMQ_CONFIG_FILE=str(self.base_dir / "rabbitmq.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base_dir / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.base_dir / "rabbitmq.pid"),
        )
        return env

    def write_config(self) -> None:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        cookie = self.base_dir / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(20))
            cookie.chmod(0o400)
        (self.base_dir / "enabled_plugins").write_text("[].\n")
        conf = self.base_dir / "rabbitmq.conf"
        conf.write_text(
            f"listeners.tcp.default = {LOOPBACK}:{self.port}\n"
            f"default_user = {self.user}\n"
            f"default_pass = {self.password}\n"
            f"default_vhost = {self.vhost}\n"
            "default_permissions.configure = .*\n"
            "default_permissions.read = .*\n"
            "default_permissions.write = .*\n"
            "loopback_users = none\n"
            "disk_free_limit.absolute = 50MB\n"
            "vm_memory_high_watermark.relative = 0.4\n"
        )
        conf.chmod(0o600)

    def start(self, timeout: float = 90.0) -> None:
        if not (self.base_dir / "rabbitmq.conf").exists():
            self.write_config()
        self.process.start()
        try:
            wait_until(self._accepts, timeout, f"RabbitMQ on port {self.port}", interval=0.5)
        except LocalStackError as exc:
            raise LocalStackError(f"{exc}\n{self.process.tail_log()}") from exc

    def _accepts(self) -> bool:
        from amqpstorm.connection import Connection

        if not port_open(self.port):
            return False
        conn = Connection(
            LOOPBACK, self.user, self.password, port=self.port, virtual_host=self.vhost, timeout=2
        )
        conn.close()
        return True

    def url(self, vhost: str | None = None) -> str:
        from urllib.parse import quote

        return (
            f"amqp://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{LOOPBACK}:{self.port}/{quote(vhost or self.vhost, safe='')}"
        )

    def ctl(self, *args: str) -> str:
        """Run rabbitmqctl against this node."""
        ctl = "/usr/lib/rabbitmq/bin/rabbitmqctl"
        result = subprocess.run(
            [ctl, "-n", self.nodename, *args],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            raise LocalStackError(f"rabbitmqctl {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def add_vhost(self, vhost: str) -> str:
        """Create a vhost the default user may fully use; returns its AMQP URL."""
        self.ctl("add_vhost", vhost)
        self.ctl("set_permissions", "-p", vhost, self.user, ".*", ".*", ".*")
        return self.url(vhost)

    def stop(self) -> None:
        self.process.stop(timeout=30)

    def kill(self) -> None:
        self.process.kill()


@dataclass
class DataStack:
    """PostgreSQL behind PgBouncer for one application role and database."""

    postgres: PostgresServer
    pgbouncer: PgBouncerServer
    app_user: str
    app_password: str
    dbname: str

    @property
    def app_dsn(self) -> str:
        """The DSN the runtime uses: through PgBouncer."""
        return self.pgbouncer.dsn(self.app_user, self.app_password, self.dbname)

    @property
    def direct_dsn(self) -> str:
        """The application role straight to PostgreSQL (migrations, admin)."""
        return dsn(LOOPBACK, self.postgres.port, self.app_user, self.app_password, self.dbname)

    def stop(self) -> None:
        self.pgbouncer.stop()
        self.postgres.stop()


def start_data_stack(
    base_dir: Path,
    *,
    dbname: str = "telegram_gateway",
    app_user: str = "telegram",
    durable: bool = False,
    pool_size: int = 20,
) -> DataStack:
    postgres = PostgresServer(base_dir / "postgres", durable=durable)
    postgres.init()
    postgres.start()
    password = secrets.token_urlsafe(18)
    postgres.create_role(app_user, password)
    postgres.create_database(dbname, app_user)
    bouncer = PgBouncerServer(base_dir / "pgbouncer", postgres, default_pool_size=pool_size)
    bouncer.add_database(dbname)
    bouncer.add_fallback_database()
    bouncer.add_user(app_user)
    bouncer.start()
    return DataStack(postgres, bouncer, app_user, password, dbname)


@contextlib.contextmanager
def running(*servers: object) -> Iterator[None]:
    """Stop the given servers (anything with .stop()) on the way out, whatever happened."""
    try:
        yield
    finally:
        for server in reversed(servers):
            with contextlib.suppress(Exception):
                server.stop()  # type: ignore[attr-defined]
