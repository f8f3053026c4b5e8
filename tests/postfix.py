"""A throw-away Postfix (Debian's `postfix`) on a loopback port, configured by the README recipe.

Its main.cf is a few lines that keep it to a temporary folder (queue, data, log) and loopback,
followed by contrib/postfix/main.cf exactly as the README shows it, with the daemon's port put
in for 8025. Postfix runs as root to start (as the package's own service does) and drops to
its `postfix` user.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .dovecot import free_port, require, wait_for_port

RECIPE = Path(__file__).resolve().parent.parent / "contrib" / "postfix" / "main.cf"

MASTER = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

BASE = """\
compatibility_level = 3.6
queue_directory = {dir}/queue
data_directory = {dir}/data
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.test.example
mydomain = test.example
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_transport = error:no local delivery here
smtp_dns_support_level = disabled
smtputf8_enable = no
"""


def recipe(daemon_port: int) -> str:
    """The README's Postfix lines with the daemon's port for 8025."""
    text = RECIPE.read_text(encoding="utf-8")
    assert "[127.0.0.1]:8025" in text
    return text.replace("[127.0.0.1]:8025", f"[127.0.0.1]:{daemon_port}")


class Postfix:
    """A Postfix instance with `-c <tempdir>`: start(), then send to 127.0.0.1:port."""

    def __init__(self, daemon_port: int) -> None:
        self.binary = require("postfix", "postfix")
        self.dir = Path(tempfile.mkdtemp(prefix="mailflow-postfix-"))
        self.dir.chmod(0o755)  # Postfix's daemons run as `postfix` and must reach the queue
        self.port = free_port()
        (self.dir / "main.cf").write_text(
            BASE.format(dir=self.dir) + "\n" + recipe(daemon_port), encoding="utf-8")
        (self.dir / "master.cf").write_text(MASTER.format(port=self.port), encoding="utf-8")
        for sub in ("queue", "data"):
            (self.dir / sub).mkdir()
        shutil.chown(self.dir / "data", "postfix")

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `postfix -c <dir> args`, failing with its output."""
        done = subprocess.run([self.binary, "-c", str(self.dir), *args],
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise AssertionError(f"postfix {' '.join(args)}: {done.stdout}{done.stderr}")
        return done

    def start(self) -> None:
        self.postfix("start")
        wait_for_port(self.port)

    def stop(self) -> None:
        subprocess.run([self.binary, "-c", str(self.dir), "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)

    def queue(self) -> list[dict[str, object]]:
        """Every message in the queue (`postqueue -j`): none means no bounce is pending."""
        done = subprocess.run(["postqueue", "-c", str(self.dir), "-j"],
                              capture_output=True, text=True, timeout=30, check=True)
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def settle(self, timeout: float = 30.0) -> None:
        """Wait until the queue is empty (probes and relayed mail gone)."""
        deadline = time.monotonic() + timeout
        while self.queue():
            if time.monotonic() > deadline:
                raise AssertionError(f"Postfix queue not empty: {self.queue()}\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        path = self.dir / "maillog"
        return path.read_text(errors="replace") if path.exists() else ""
