"""[inbound] STARTTLS and AUTH work when enabled (a certificate generated for the test)."""

from __future__ import annotations

import os
import smtplib
import ssl
import subprocess
from pathlib import Path

import pytest

from mailflow.testing import Sink

from .conftest import T0, write_config
from .helpers import Process


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


def test_starttls_and_auth(tmp_path: Path, sink: Sink, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    write_config(tmp_path, sink.port, extra=(
        f'[inbound]\ntls_cert = "{cert}"\ntls_key = "{key}"\nrequire_tls = true\n'
        'username = "mta"\npassword = "s3cret"\n'))
    daemon = Process(tmp_path, {"MAILFLOW_NOW": T0.isoformat()})
    context = ssl.create_default_context(cafile=str(cert))
    try:
        with smtplib.SMTP("127.0.0.1", daemon.port or 0, timeout=10) as smtp:
            code, _ = smtp.mail("bob@example.org")
            assert code == 530, "no mail before STARTTLS"
        with smtplib.SMTP("127.0.0.1", daemon.port or 0, timeout=10) as smtp:
            smtp.starttls(context=context)
            smtp.ehlo()
            assert smtp.sock.version() in ("TLSv1.2", "TLSv1.3")  # type: ignore[union-attr]
            code, _ = smtp.mail("bob@example.org")
            assert code == 530, "authentication required"
            with pytest.raises(smtplib.SMTPAuthenticationError):
                smtp.login("mta", "wrong")
        with smtplib.SMTP("127.0.0.1", daemon.port or 0, timeout=10) as smtp:
            smtp.starttls(context=context)
            smtp.ehlo()
            smtp.login("mta", "s3cret")
            code, _ = smtp.mail("bob@example.org")
            assert code == 250
            code, _ = smtp.rcpt("incidents+1-00000000000000000000@example.org")
            assert code == 550, "and then the token is checked as usual"
    finally:
        daemon.close()


def test_binds_loopback_by_default(tmp_path: Path, sink: Sink) -> None:
    write_config(tmp_path, sink.port)
    daemon = Process(tmp_path, {})
    try:
        assert any("listening for replies on 127.0.0.1:" in line for line in daemon.lines)
    finally:
        daemon.close()


def test_files_are_private(tmp_path: Path, sink: Sink) -> None:
    write_config(tmp_path, None)
    from mailflow.app import Mailflow
    from mailflow.config import load_config

    app = Mailflow(load_config(tmp_path / "mailflow.toml"))
    app.deliver_now(T0)
    assert os.stat(tmp_path / "state" / "mailflow.db").st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "mail").st_mode & 0o777 == 0o700
    app.close()


def test_outbound_starttls_and_auth_to_the_relay(tmp_path: Path,
                                                 certificate: tuple[Path, Path]) -> None:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    from mailflow.app import Mailflow
    from mailflow.config import load_config

    from .helpers import declare

    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert), str(key))
    logins: list[bytes] = []

    def authenticator(server, session, envelope, mechanism, data):  # noqa: ANN001, ANN202
        logins.append(data.login)
        ok = isinstance(data, LoginPassword) and (data.login, data.password) == (b"desk", b"pw")
        return AuthResult(success=ok)

    with Sink(tls_context=context, require_starttls=True, authenticator=authenticator,
              auth_required=True) as relay:
        write_config(tmp_path, relay.port)
        config = tmp_path / "mailflow.toml"
        config.write_text(config.read_text().replace(
            "starttls = false", f'starttls = true\nusername = "desk"\npassword = "pw"\n'
                                f'cafile = "{cert}"'))
        app = Mailflow(load_config(config))
        declare(app, impacted=[])
        report = app.deliver_now(T0)
        assert report.sent == 2 and not report.errors
        assert len(relay.received) == 2 and logins == [b"desk"]
        app.close()
