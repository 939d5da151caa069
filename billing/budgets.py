"""Budgets: a spend limit over a period, held by a key, a person or a team.

A ``Budget`` is an immutable value built here and nowhere else: the gateway's policy
snapshot, the limiter's counter rebuild, reconciliation, alerts, the API and the dashboard all
take it from these functions, and read its period spend from the one queryset method
``UsageDaily.objects.spent`` (the daily rollups).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from accounts.models import ApiKey, Person, Team
from accounts.services import billed_team
from billing.models import UsageDaily
from billing.periods import period_key, period_start

# Which usage column names a budget holder, by scope.
OWNER_COLUMNS = {"key": "api_key_id", "team": "team_id", "person": "person_id"}


@dataclass(frozen=True)
class Budget:
    scope: str  # "key", "person" or "team"
    owner_id: int
    limit_usd: Decimal
    period: str  # day, week, month or total (billing.periods)

    @property
    def subject(self) -> str:
        """``key:12``: names the holder in alerts and counters."""
        return f"{self.scope}:{self.owner_id}"

    @property
    def owner_column(self) -> str:
        return OWNER_COLUMNS[self.scope]

    def start(self, now: datetime) -> datetime:
        return period_start(self.period, now)

    def period_name(self, now: datetime) -> str:
        return period_key(self.period, now)


def of_key(key: ApiKey) -> Budget | None:
    if key.budget_usd is None:
        return None
    return Budget("key", key.pk, key.budget_usd, key.budget_period)


def of_team(team: Team) -> Budget | None:
    if team.budget_usd is None:
        return None
    return Budget("team", team.pk, team.budget_usd, team.budget_period)


def of_person(person: Person | None) -> Budget | None:
    if person is None or person.budget_usd is None:
        return None
    return Budget("person", person.pk, person.budget_usd, person.budget_period)


def for_call(*, key: ApiKey | None, person: Person | None, team: Team | None) -> tuple[Budget, ...]:
    """Every budget a call counts against: its key's, its person's, the team it is billed
    to (``accounts.services.billed_team``)."""
    found = [of_key(key) if key is not None else None, of_person(person)]
    found.append(of_team(team) if team is not None else None)
    return tuple(budget for budget in found if budget is not None)


def for_key(key: ApiKey) -> tuple[Budget, ...]:
    """The budgets a call made with ``key`` counts against."""
    person = Person.objects.filter(pk=key.owner_id).first() if key.owner_id else None
    return for_call(key=key, person=person, team=billed_team(key=key, person=person))


def holders() -> Iterator[tuple[Budget, ApiKey | Team | Person]]:
    """Every budget of an active key, a person or a team, with its holder (alerts,
    reconciliation)."""
    for key in ApiKey.objects.active().filter(budget_usd__isnull=False).select_related("team"):
        yield of_key(key), key
    for person in Person.objects.filter(budget_usd__isnull=False):
        yield of_person(person), person
    for team in Team.objects.filter(budget_usd__isnull=False):
        yield of_team(team), team


@dataclass(frozen=True)
class BudgetState:
    """A budget and what is left of it in the current period (API, dashboard)."""

    budget: Budget
    period: str
    spent_usd: Decimal

    @property
    def remaining_usd(self) -> Decimal:
        return max(Decimal(0), self.budget.limit_usd - self.spent_usd)


def state(budget: Budget, now: datetime) -> BudgetState:
    return BudgetState(budget, budget.period_name(now), UsageDaily.objects.spent(budget, now))
