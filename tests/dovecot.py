"""A throw-away Dovecot (Debian's `dovecot-imapd`) on a loopback port, with its own config.

It runs as root (as the package's own service does) with its runtime, state and mail in a
temporary folder; mail is stored as an unprivileged user (`nobody`). Tests put mail in
with IMAP APPEND, exactly like a client restoring mail would.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

USER, PASSWORD = "replies", "secret-pw"


def require(binary: str, package: str) -> str:
    """The path of `binary`; fails under MAILFLOW_REQUIRE_SERVICES=1, else skips the test."""
    path = shutil.which(binary) or next(
        (p for p in (f"/usr/sbin/{binary}", f"/sbin/{binary}") if os.path.exists(p)), None)
    if path is None or os.geteuid() != 0:
        why = f"{binary} ({package}) is not installed" if path is None else \
            f"{binary} must be started as root"
        if os.environ.get("MAILFLOW_REQUIRE_SERVICES") == "1":
            pytest.fail(f"{why}; .ci/run installs it (apt-get install {package})")
        pytest.skip(why)
    return path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, up: bool = True, timeout: float = 20.0) -> None:
    """Wait until 127.0.0.1:port accepts connections (or, with up=False, refuses them)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} still {'closed' if up else 'open'} after {timeout}s")


class Dovecot:
    """`dovecot -F -c CONF` in the background; start(), stop() and start() again."""

    def __init__(self, introspection_url: str | None = None) -> None:
        """With `introspection_url`, XOAUTH2 logins are checked by POSTing the token there."""
        self.binary = require("dovecot", "dovecot-imapd")
        # Not under pytest's tmp_path: that is 0700 root, and mail is stored as `nobody`.
        self.dir = Path(tempfile.mkdtemp(prefix="mailflow-dovecot-"))
        self.dir.chmod(0o755)
        self.port = free_port()
        self.user, self.password = USER, PASSWORD
        self.process: subprocess.Popen[bytes] | None = None
        nobody = pwd.getpwnam("nobody")
        home = self.dir / "home"
        home.mkdir()
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        (self.dir / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
        internal = "dovecot" if _user_exists("dovecot") else "nobody"
        login = "dovenull" if _user_exists("dovenull") else "nobody"
        self.conf = self.dir / "dovecot.conf"
        mechanisms, oauth2 = "plain", ""
        if introspection_url:
            # Dovecot's OAuth2 passdb: the token is valid if the introspection endpoint says
            # {"active": true, "email": <the login user>} (RFC 7662).
            mechanisms = "plain xoauth2 oauthbearer"
            (self.dir / "oauth2.conf.ext").write_text(
                f"introspection_mode = post\nintrospection_url = {introspection_url}\n"
                "username_attribute = email\nactive_attribute = active\nactive_value = true\n")
            oauth2 = f"""passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {self.dir}/oauth2.conf.ext
}}
"""
        self.conf.write_text(f"""\
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
instance_name = mailflow-test-{self.port}
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
login_trusted_networks = 127.0.0.1
default_internal_user = {internal}
default_login_user = {login}
mail_location = maildir:~/Maildir
namespace inbox {{
  inbox = yes
  separator = /
}}
{oauth2}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {self.dir}/passwd
}}
userdb {{
  driver = static
  args = uid={nobody.pw_uid} gid={nobody.pw_gid} home={home}/%u
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
""")

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self.process = subprocess.Popen([self.binary, "-F", "-c", str(self.conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for_port(self.port)
        except TimeoutError:
            self.stop()
            log = (self.dir / "dovecot.log")
            raise RuntimeError("dovecot did not start: " + (
                log.read_text()[-2000:] if log.exists() else "no log")) from None

    def stop(self) -> None:
        """Stop the server (and its imap processes) and wait until the port is closed."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None
        wait_for_port(self.port, up=False)

    def close(self) -> None:
        """Stop and remove the temporary folder."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self):  # type: ignore[no-untyped-def]
        """A logged-in IMAPClient (plain IMAP: loopback only) for the test's own use."""
        from imapclient import IMAPClient

        client = IMAPClient("127.0.0.1", self.port, ssl=False, timeout=30)
        client.login(self.user, self.password)
        return client

    def append(self, raw: bytes, folder: str = "INBOX") -> None:
        """Put one message in `folder` with IMAP APPEND."""
        with self.client() as client:
            if not client.folder_exists(folder):
                client.create_folder(folder)
            client.append(folder, raw)

    def reset_uidvalidity(self, folder: str = "INBOX") -> int:
        """Give `folder` a new UIDVALIDITY (as a server rebuilding its index does); the new one."""
        with self.client() as client:
            old = int(client.select_folder(folder)[b"UIDVALIDITY"])
        doveadm = require("doveadm", "dovecot-core")
        subprocess.run([doveadm, "-c", str(self.conf), "mailbox", "update", "-u", self.user,
                        "--uid-validity", str(old + 1000), folder], check=True,
                       capture_output=True)
        with self.client() as client:
            return int(client.select_folder(folder)[b"UIDVALIDITY"])

    def uids(self, folder: str = "INBOX") -> list[int]:
        """The UIDs in `folder` (empty if it does not exist)."""
        with self.client() as client:
            if not client.folder_exists(folder):
                return []
            client.select_folder(folder, readonly=True)
            return sorted(client.search("ALL"))

    def messages(self, folder: str) -> list[bytes]:
        """The raw messages in `folder`, oldest first."""
        with self.client() as client:
            if not client.folder_exists(folder):
                return []
            client.select_folder(folder, readonly=True)
            uids = sorted(client.search("ALL"))
            data = client.fetch(uids, ["BODY.PEEK[]"]) if uids else {}
            return [data[uid][b"BODY[]"] for uid in uids]


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
