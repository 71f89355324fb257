"""A real SMTP server (aiosmtpd) on a free loopback port, keeping every message it accepts, or refusing them all."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller

from tests.support.registry_server import free_port


class SmtpServer:
    """Accepts mail (or answers `refuse_with`, such as "554 5.7.1 relay denied", to every message) and keeps what it
    accepted as parsed messages, each with the envelope's recipients."""

    def __init__(self, refuse_with: str = ""):
        self.refuse_with = refuse_with
        self.messages: list[tuple[list[str], EmailMessage]] = []
        self.controller = Controller(self, hostname="127.0.0.1", port=free_port())
        self.controller.start()
        self.host, self.port = "127.0.0.1", self.controller.port

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        if self.refuse_with:
            return self.refuse_with
        message = email.message_from_bytes(envelope.content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), message))
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        return [message for recipients, message in self.messages if address in recipients]

    def recipients(self) -> list[str]:
        return sorted(address for recipients, _ in self.messages for address in recipients)

    def stop(self) -> None:
        self.controller.stop()
