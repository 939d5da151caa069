"""Base for management commands that ops scripts call: one-line errors, parsed values."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

from django.core.management.base import BaseCommand, CommandError, CommandParser

from llmproxy.core.acting import acting


class _OneLineParser(CommandParser):
    def error(self, message):
        if not self.called_from_command_line:
            raise CommandError(message)
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


class OpsCommand(BaseCommand):
    """Bad arguments give ``prog: error: ...`` on one line and a non-zero exit."""

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        # Django instantiates CommandParser itself; only error() differs, so swap the class.
        parser.__class__ = _OneLineParser
        return parser

    def execute(self, *args, **options):
        # What this command changes is audited as done by it (accounts.audit).
        name = f"manage.py {type(self).__module__.rsplit('.', 1)[-1]}"
        try:
            with acting("command", name=name):
                return super().execute(*args, **options)
        except CommandError:
            raise
        except ValueError as exc:
            raise CommandError(str(exc)) from exc


def comma_list(value: str) -> list[str]:
    items = [item.strip() for item in value.split(",")]
    if not items or any(not item for item in items):
        raise CommandError(f"expected a comma-separated list without empty items, got {value!r}")
    return items


def positive_int(name: str, value: int | None) -> int | None:
    if value is not None and value <= 0:
        raise CommandError(f"{name} must be a positive integer, got {value}")
    return value


def money(name: str, value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation:
        raise CommandError(f"{name} must be a number of USD, got {value!r}") from None
    if not amount.is_finite() or amount < 0:
        raise CommandError(f"{name} must be zero or more USD, got {value!r}")
    return amount.quantize(Decimal("0.0001"))


def timestamp(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{name} must be an ISO 8601 date or time, got {value!r}") from None
    # A bare date or time without offset is read as UTC, the gateway's only clock.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
