"""What a person may do for themselves on /me/: make keys within their team's policy and
revoke their own keys."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from accounts import services
from accounts.models import ApiKey, Team
from accounts.services import NotAllowed


def create_own_key(
    *,
    user,
    name: str,
    team: Team,
    budget_usd: Decimal | None = None,
    expires_at: datetime | None = None,
) -> tuple[ApiKey, str]:
    """A key of ``user``, billed to one of their teams and holding that team's policy (its
    models, endpoints, hosted tools and rate limits); the person's and the team's own
    policies and budgets apply to its calls as to every other."""
    if not user.teams.filter(pk=team.pk).exists():
        raise NotAllowed("You can make keys only for a team you are in.")
    return services.create_key(
        name=name,
        owner=user,
        team=team,
        allowed_models=list(team.allowed_models or []),
        allowed_endpoints=list(team.allowed_endpoints or []),
        allowed_tools=list(team.allowed_tools or []),
        rpm=team.rpm,
        tpm=team.tpm,
        max_concurrent=team.max_concurrent,
        budget_usd=budget_usd,
        expires_at=expires_at,
        tags=["self-service"],
    )


def revoke_own_key(*, user, key_id: int) -> bool:
    """Revoke one of ``user``'s keys; False if it is not theirs or already revoked."""
    mine = ApiKey.objects.filter(owner=user, pk=key_id, revoked_at__isnull=True)
    return services.revoke_keys(queryset=mine, reason="revoked by its owner") > 0
