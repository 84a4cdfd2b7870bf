"""E-mail for notifications, through an SMTP server (when one is configured)."""

from __future__ import annotations

import smtplib
from dataclasses import dataclass
from email.message import EmailMessage


@dataclass(frozen=True)
class SmtpConfig:
    host: str
    port: int = 25
    sender: str = "crm@localhost"
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    timeout_seconds: float = 10.0


class Mailer:
    """Sends one message per notification over one SMTP connection per batch."""

    def __init__(self, config: SmtpConfig):
        self.config = config

    def send(self, messages: list[tuple[str, str, str]]) -> None:
        """``(to, subject, body)`` each; raises on the first failure."""
        c = self.config
        with smtplib.SMTP(c.host, c.port, timeout=c.timeout_seconds) as smtp:
            if c.starttls:
                smtp.starttls()
            if c.username:
                smtp.login(c.username, c.password or "")
            for to, subject, body in messages:
                msg = EmailMessage()
                msg["From"] = c.sender
                msg["To"] = to
                msg["Subject"] = subject
                msg.set_content(body)
                smtp.send_message(msg)
