"""The mail seam: real SMTP when a host is set, else the log (development) or nothing (production)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from gameplane.auth.mail import DroppingMailer, LogMailer, Mail, SmtpMailer, mailer_from_settings
from gameplane.settings import load_settings

KEY = "k" * 40


async def test_without_smtp_development_logs_the_mail(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    mailer = mailer_from_settings(load_settings({"GAMEPLANE_DATA_DIR": str(tmp_path)}))
    assert isinstance(mailer, LogMailer)
    with caplog.at_level(logging.INFO):
        await mailer.send(Mail("u@example.com", "Reset", "the link"))
    assert "the link" in caplog.text and "GAMEPLANE_SMTP_HOST is unset" in caplog.text


async def test_without_smtp_production_drops_the_mail_body(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    settings = load_settings({"GAMEPLANE_DATA_DIR": str(tmp_path), "GAMEPLANE_ENVIRONMENT": "production",
                              "GAMEPLANE_SECRET_KEY": KEY})
    mailer = mailer_from_settings(settings)
    assert isinstance(mailer, DroppingMailer)
    with caplog.at_level(logging.INFO):
        await mailer.send(Mail("u@example.com", "Reset", "secret link"))
    assert "secret link" not in caplog.text and "dropped" in caplog.text


async def test_smtp_delivers_through_the_configured_server(tmp_path: Path, inbox: Any) -> None:
    handler, port = inbox
    settings = load_settings({"GAMEPLANE_DATA_DIR": str(tmp_path), "GAMEPLANE_SMTP_HOST": "127.0.0.1",
                              "GAMEPLANE_SMTP_PORT": str(port), "GAMEPLANE_SMTP_FROM": "p@example.com"})
    mailer = mailer_from_settings(settings)
    assert isinstance(mailer, SmtpMailer)
    await mailer.send(Mail("u@example.com", "Hello", "body text"))
    [message] = handler.to("u@example.com")
    assert message["Subject"] == "Hello" and message["From"] == "p@example.com"
    assert message.get_content().strip() == "body text"
