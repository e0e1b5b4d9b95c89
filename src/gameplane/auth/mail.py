"""Outgoing mail behind a small seam, chosen by settings:

- :class:`SmtpMailer` (``GAMEPLANE_SMTP_HOST`` set): real SMTP through aiosmtplib,
  with STARTTLS and login when configured;
- :class:`LogMailer` (no SMTP host, development): writes the whole message to the
  log, so a developer can follow a reset link without a mail server;
- :class:`DroppingMailer` (no SMTP host, production): logs a warning without the
  body — a reset link in a production log would be a credential in the log.

Errors: :class:`MailError` (``Unavailable``), translated from aiosmtplib's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Protocol

import aiosmtplib

from gameplane.errors import Unavailable
from gameplane.settings import Settings

log = logging.getLogger(__name__)


class MailError(Unavailable):
    code = "mail_failed"


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    body: str


class Mailer(Protocol):
    async def send(self, mail: Mail) -> None: ...


def _message(sender: str, mail: Mail) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message.set_content(mail.body)
    return message


class SmtpMailer:
    def __init__(self, settings: Settings):
        self.settings = settings

    async def send(self, mail: Mail) -> None:
        s = self.settings
        try:
            await aiosmtplib.send(
                _message(s.smtp_from, mail), hostname=s.smtp_host, port=s.smtp_port,
                username=s.smtp_user or None,
                password=s.smtp_password.get_secret_value() if s.smtp_password else None,
                start_tls=s.smtp_starttls, timeout=30)
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise MailError(details={"to": mail.to, "reason": str(exc)}) from exc


class LogMailer:
    async def send(self, mail: Mail) -> None:
        log.info("mail (not sent: GAMEPLANE_SMTP_HOST is unset) to %s: %s\n%s",
                 mail.to, mail.subject, mail.body)


class DroppingMailer:
    async def send(self, mail: Mail) -> None:
        log.warning("mail to %s dropped (%s): set GAMEPLANE_SMTP_HOST", mail.to, mail.subject)


def mailer_from_settings(settings: Settings) -> Mailer:
    if settings.smtp_host:
        return SmtpMailer(settings)
    if settings.environment == "development":
        log.warning("GAMEPLANE_SMTP_HOST is unset: mail is written to this log instead of sent")
        return LogMailer()
    log.warning("GAMEPLANE_SMTP_HOST is unset: mail (password resets) is dropped")
    return DroppingMailer()
