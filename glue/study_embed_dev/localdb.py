"""A project-local PostgreSQL cluster: the default database when DATABASE_URL is unset.

`make db-up` / `make db-down` call this module; the test suite uses it to start throwaway
clusters. The data directory lives in the project (`.pgdata/`, ignored by git), the unix socket
beside it, and the server listens on loopback only. pg_cron is preloaded (in the `postgres`
database, with background workers, as on managed services), so `make migrate` exercises the
same cross-database scheduling path as production.

initdb refuses to run as root, so when invoked as root the cluster belongs to, and runs as, the
unprivileged `postgres` OS user (created by Debian's postgresql package).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 54329
DEFAULT_DBNAME = "study_embed"
SUPERUSER = "postgres"
RUN_AS = "postgres"


def project_root() -> Path:
    """The checkout (this package is never installed anywhere else)."""
    return Path(__file__).resolve().parents[2]


def pg_bindir() -> Path:
    """The server binaries: $PG_BINDIR, else the newest /usr/lib/postgresql/N/bin."""
    if env := os.environ.get("PG_BINDIR"):
        return Path(env)
    candidates = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if not candidates:
        raise SystemExit("no PostgreSQL server found under /usr/lib/postgresql: run `make deps`")
    return candidates[-1]


def _as_root() -> bool:
    return os.geteuid() == 0


def _run_user_cmd(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", RUN_AS, "--", *cmd] if _as_root() else cmd


def _accessible_by_run_user(path: Path) -> bool:
    if not _as_root():
        return True
    return (
        subprocess.run(_run_user_cmd(["test", "-x", str(path)]), capture_output=True).returncode
        == 0
    )


@dataclass(frozen=True)
class Cluster:
    """One cluster: its data directory, socket directory and port."""

    datadir: Path
    port: int = DEFAULT_PORT

    @property
    def sockdir(self) -> Path:
        return self.datadir.parent / "run"

    @property
    def logfile(self) -> Path:
        return self.datadir.parent / "postgres.log"

    def url(self, dbname: str = DEFAULT_DBNAME, user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@/{dbname}?host={self.sockdir}&port={self.port}"

    # -- lifecycle ------------------------------------------------------------------------------

    def _chown(self, path: Path) -> None:
        if _as_root():
            pw = pwd.getpwnam(RUN_AS)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def init(self) -> bool:
        """initdb once; returns True when it created the cluster."""
        if (self.datadir / "PG_VERSION").exists():
            return False
        for d in (self.datadir.parent, self.datadir, self.sockdir):
            d.mkdir(parents=True, exist_ok=True)
            self._chown(d)
        os.chmod(self.datadir, 0o700)
        subprocess.run(
            _run_user_cmd(
                [
                    str(pg_bindir() / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    SUPERUSER,
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--no-sync",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with open(self.datadir / "postgresql.auto.conf", "a") as conf:
            conf.write(
                "# study-embed local cluster\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.sockdir}'\n"
                "shared_preload_libraries = 'pg_cron'\n"
                "cron.database_name = 'postgres'\n"
                "cron.use_background_workers = on\n"
                "max_worker_processes = 32\n"
                "max_connections = 200\n"
                "fsync = off\n"
                "synchronous_commit = off\n"
                "full_page_writes = off\n"
            )
        return True

    def is_running(self) -> bool:
        if not (self.datadir / "PG_VERSION").exists():
            return False
        r = subprocess.run(
            _run_user_cmd([str(pg_bindir() / "pg_ctl"), "-D", str(self.datadir), "status"]),
            capture_output=True,
        )
        return r.returncode == 0

    def start(self, extra_options: str = "") -> None:
        if self.is_running():
            return
        self.sockdir.mkdir(parents=True, exist_ok=True)
        self._chown(self.sockdir)
        if not self.logfile.exists():
            self.logfile.touch()
        self._chown(self.logfile)
        opts = f"-p {self.port} {extra_options}".strip()
        r = subprocess.run(
            _run_user_cmd(
                [
                    str(pg_bindir() / "pg_ctl"),
                    "-D",
                    str(self.datadir),
                    "-l",
                    str(self.logfile),
                    "-o",
                    opts,
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if r.returncode != 0:
            tail = self.logfile.read_text(errors="replace").splitlines()[-15:]
            raise SystemExit(
                f"PostgreSQL did not start on port {self.port}: {r.stderr.strip()}\n"
                + "\n".join(tail)
            )

    def stop(self, mode: str = "fast") -> None:
        if not self.is_running():
            return
        subprocess.run(
            _run_user_cmd(
                [str(pg_bindir() / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def standby(self, datadir: Path, port: int, synchronous: bool = False) -> Cluster:
        """A streaming standby of this (running) cluster: pg_basebackup -R into `datadir`,
        started on `port` with a socket directory of its own.  With `synchronous`, this cluster
        waits for the standby to confirm every commit (synchronous_standby_names)."""
        standby = Cluster(datadir=datadir, port=port)
        for d in (datadir.parent, standby.sockdir):
            d.mkdir(parents=True, exist_ok=True)
            self._chown(d)
        name = f"standby_{port}"
        subprocess.run(
            _run_user_cmd(
                [
                    str(pg_bindir() / "pg_basebackup"),
                    "-D",
                    str(datadir),
                    "-R",  # standby.signal and primary_conninfo
                    "-X",
                    "stream",
                    "-c",
                    "fast",
                    "-d",
                    f"host={self.sockdir} port={self.port} user={SUPERUSER}"
                    f" application_name={name}",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        with open(datadir / "postgresql.auto.conf", "a") as conf:
            conf.write(f"unix_socket_directories = '{standby.sockdir}'\nhot_standby = on\n")
        if synchronous:
            import psycopg

            with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
                conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{name}'")
                conn.execute("ALTER SYSTEM SET synchronous_commit = on")
                conn.execute("SELECT pg_reload_conf()")
        standby.start()
        return standby

    def promote(self) -> None:
        """End recovery: the standby becomes a primary."""
        subprocess.run(
            _run_user_cmd(
                [str(pg_bindir() / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "60", "promote"]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def create_database(self, dbname: str) -> bool:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
                return False
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            return True

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def default_cluster() -> Cluster:
    """The project's cluster: `.pgdata/` in the checkout.

    When the unprivileged server user cannot reach the checkout (say it lives under /root),
    `.pgdata` becomes a link to a directory under /var/tmp that it can reach.
    """
    root = project_root()
    link = root / ".pgdata"
    port = int(os.environ.get("LOCAL_PG_PORT", DEFAULT_PORT))
    if not link.exists() and not link.is_symlink():
        if _accessible_by_run_user(root):
            link.mkdir()
        else:
            digest = hashlib.sha256(str(root).encode()).hexdigest()[:12]
            target = Path("/var/tmp") / f"study-embed-{digest}"
            target.mkdir(parents=True, exist_ok=True)
            os.chmod(target, 0o755)
            link.symlink_to(target)
    return Cluster(datadir=link.resolve() / "data", port=port)


def default_url() -> str:
    return default_cluster().url()


def _cmd_up(_: argparse.Namespace) -> None:
    c = default_cluster()
    if c.init():
        print(f"initialised a local cluster in {c.datadir}", file=sys.stderr)
    c.start()
    created = c.create_database(DEFAULT_DBNAME)
    print(
        f"local PostgreSQL is up on port {c.port} (socket {c.sockdir})"
        f"{'; created database ' + DEFAULT_DBNAME if created else ''}",
        file=sys.stderr,
    )
    print(f"DATABASE_URL={c.url()}", file=sys.stderr)


def _cmd_down(_: argparse.Namespace) -> None:
    c = default_cluster()
    c.stop()
    print("local PostgreSQL stopped", file=sys.stderr)


def _cmd_url(_: argparse.Namespace) -> None:
    print(default_url())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def scratch_cluster(settings: str = ""):
    """A throwaway cluster with one empty database `bench`; yields (cluster, url)."""
    root = Path(tempfile.mkdtemp(prefix="study-embed-bench-"))
    os.chmod(root, 0o755)
    cluster = Cluster(datadir=root / "data", port=free_port())
    try:
        cluster.init()
        cluster.start(extra_options=settings)
        cluster.create_database("bench")
        yield cluster, cluster.url("bench")
    finally:
        cluster.destroy()


@contextlib.contextmanager
def scratch_database(embedding_dim: int = 1024, settings: str = "", model: str = "BAAI/bge-m3"):
    """A throwaway cluster with one migrated database `bench` (benchmarks, `make eval`), serving
    `model`; yields (cluster, url)."""
    from study_embed.migrate import Migrator

    with scratch_cluster(settings) as (cluster, url):
        Migrator(
            url, embedding_dim=embedding_dim, model=model, cron=False, log=lambda m: None
        ).run()
        yield cluster, url


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m study_embed_dev.localdb",
        description="Start, stop or locate the project-local cluster.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="initialise (once) and start the cluster").set_defaults(fn=_cmd_up)
    sub.add_parser("down", help="stop the cluster").set_defaults(fn=_cmd_down)
    sub.add_parser("url", help="print its DATABASE_URL").set_defaults(fn=_cmd_url)
    args = p.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
