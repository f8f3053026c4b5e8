"""A throw-away PostgreSQL (Debian's `postgresql`) on a loopback port, its data in a temp dir.

initdb and the server run as an unprivileged user (`nobody`) when the tests run as root,
as PostgreSQL refuses to run as root. Authentication is `trust` on 127.0.0.1 only; each
test gets a database of its own (`fresh()`), created from the server's template.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .dovecot import free_port, wait_for_port

USER = "mailflow"


def _binaries() -> Path | None:
    """The newest /usr/lib/postgresql/*/bin that has initdb (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    return Path(found[-1]).parent if found else None


def require_postgres() -> Path:
    """The server's bin directory; fails under MAILFLOW_REQUIRE_SERVICES=1, else skips."""
    bindir = _binaries()
    if bindir is None:
        why = "PostgreSQL (postgresql) is not installed"
        if os.environ.get("MAILFLOW_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{why}; .ci/run installs it (apt-get install postgresql)")
        pytest.skip(why)
    return bindir


class Postgres:
    """initdb + `pg_ctl start` on 127.0.0.1:port; start(), stop(), restart(), close()."""

    def __init__(self) -> None:
        self.bindir = require_postgres()
        # Not under pytest's tmp_path: that is 0700 root, and the server runs as `nobody`.
        self.dir = Path(tempfile.mkdtemp(prefix="mailflow-postgres-"))
        self.dir.chmod(0o755)
        self.data = self.dir / "data"
        self.port = free_port()
        self._names = itertools.count(1)
        self._as: list[str] = []
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.dir, nobody.pw_uid, nobody.pw_gid)
            self._as = ["runuser", "-u", "nobody", "--"]
        self._run("initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                  "--no-instructions", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run([*self._as, str(self.bindir / tool), *args],
                                capture_output=True, text=True, cwd=self.dir, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stdout}{result.stderr}")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        # fsync off: a test server's data is thrown away; durability is the real server's job.
        opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories="
                f"{self.dir} -c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-o", opts,
                  "-w", "-t", "60", "start")
        wait_for_port(self.port)

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (fast: open connections are cut, as in a failover)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        """A postgresql:// URL for `database` on this server."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def fresh(self) -> str:
        """A new empty database on this server; its URL."""
        import psycopg

        name = f"t{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        """Stop the server if it runs and remove its data."""
        try:
            self.stop("immediate")
        except RuntimeError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)
