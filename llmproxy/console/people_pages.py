"""Spend per person, tool, model and session for staff (/dashboard/people/), and a person's
own page (/me/): spend and remaining budgets, sessions, and keys made and revoked there."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.views.decorators import staff_member_required
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.safestring import mark_safe
from django.views.decorators.http import require_POST

from accounts import selfservice
from accounts.models import Person, Team
from accounts.services import NotAllowed, billed_team
from billing import budgets, reports
from billing.models import UsageEvent
from llmproxy.console import charts

DAYS = 30
SESSIONS_PER_PAGE = 25


def _since(now: datetime) -> datetime:
    return now - timedelta(days=DAYS)


def _session_page(request, events):
    """A page of sessions of ``events`` (?page=), with models, agents and person names."""
    page = Paginator(reports.sessions(events), SESSIONS_PER_PAGE).get_page(request.GET.get("page"))
    rows = reports.with_details(events, list(page.object_list))
    names = dict(
        get_user_model()
        .objects.filter(pk__in={row["person"] for row in rows if row["person"]})
        .values_list("pk", "username")
    )
    for row in rows:
        row["person_name"] = names.get(row["person"])
    return page, rows


def _named(rows: list[dict]) -> list[dict]:
    """Rows by person: each with the person's username."""
    users = get_user_model().objects.filter(pk__in={r["group"] for r in rows if r["group"]})
    names = dict(users.values_list("pk", "username"))
    for row in rows:
        row["name"] = names.get(row["group"])
    return rows


def _budget_rows(found, now: datetime) -> list[dict]:
    rows = []
    for state in (budgets.state(budget, now) for budget in found):
        rows.append(
            {
                "state": state,
                # built and escaped in charts
                "bar": mark_safe(charts.burn_bar(state.spent_usd, state.budget.limit_usd)),  # noqa: S308
            }
        )
    return rows


def _person_budgets(user):
    """A sign-in's budgets: the person's own and their default team's."""
    person = Person.objects.filter(user=user).select_related("default_team").first()
    return budgets.for_call(key=None, person=person, team=billed_team(key=None, person=person))


@staff_member_required
def people(request):
    now = datetime.now(UTC)
    events = reports.in_range(UsageEvent.objects.all(), _since(now))
    context = {
        **admin.site.each_context(request),
        "title": "Spend by person, tool and model",
        "days": DAYS,
        "by_person": _named(reports.breakdown(events, "person")),
        "by_tool": reports.breakdown(events, "tool"),
        "by_client": reports.breakdown(events, "client"),
        "by_model": reports.breakdown(events, "model"),
    }
    context["page"], context["sessions"] = _session_page(request, events)
    return render(request, "dashboard/people.html", context)


@staff_member_required
def person_detail(request, user_id: int):
    person = get_object_or_404(get_user_model(), pk=user_id)
    now = datetime.now(UTC)
    events = reports.in_range(UsageEvent.objects.filter(person=person), _since(now))
    context = {
        **admin.site.each_context(request),
        "title": f"Spend of {person.get_username()}",
        "subject": person,
        "days": DAYS,
        "budgets": _budget_rows(_person_budgets(person), now),
        "by_tool": reports.breakdown(events, "tool"),
        "by_model": reports.breakdown(events, "model"),
    }
    context["page"], context["sessions"] = _session_page(request, events)
    return render(request, "dashboard/person.html", context)


class OwnKeyForm(forms.Form):
    name = forms.CharField(max_length=100)
    team = forms.ModelChoiceField(queryset=Team.objects.none(), empty_label=None)
    budget_usd = forms.DecimalField(
        label="Budget (USD per month)", required=False, min_value=Decimal(0), max_digits=12,
        decimal_places=4,
    )  # fmt: skip
    expires_in_days = forms.IntegerField(required=False, min_value=1, max_value=3650)

    def __init__(self, *args, user, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["team"].queryset = user.teams.all()


def _me_context(request, form: OwnKeyForm) -> dict:
    user = request.user
    now = datetime.now(UTC)
    events = reports.in_range(UsageEvent.objects.filter(person=user), _since(now))
    context = {
        **admin.site.each_context(request),
        "title": "My spend, sessions and keys",
        "is_nav_sidebar_enabled": False,  # the admin's app list is not theirs
        "days": DAYS,
        "budgets": _budget_rows(_person_budgets(user), now),
        "by_tool": reports.breakdown(events, "tool"),
        "by_model": reports.breakdown(events, "model"),
        "keys": user.api_keys.select_related("team").order_by("-created_at"),
        "form": form,
        "teams": user.teams.all(),
    }
    context["page"], context["sessions"] = _session_page(request, events)
    return context


@login_required
def me(request):
    if request.method == "POST":
        return _create_key(request)
    return render(request, "accounts/me.html", _me_context(request, OwnKeyForm(user=request.user)))


def _create_key(request):
    form = OwnKeyForm(request.POST, user=request.user)
    if not form.is_valid():
        return render(request, "accounts/me.html", _me_context(request, form), status=400)
    days = form.cleaned_data["expires_in_days"]
    try:
        key, secret = selfservice.create_own_key(
            user=request.user,
            name=form.cleaned_data["name"],
            team=form.cleaned_data["team"],
            budget_usd=form.cleaned_data["budget_usd"],
            expires_at=datetime.now(UTC) + timedelta(days=days) if days else None,
        )
    except (NotAllowed, InvalidOperation) as exc:
        form.add_error(None, str(exc))
        return render(request, "accounts/me.html", _me_context(request, form), status=400)
    context = _me_context(request, OwnKeyForm(user=request.user))
    context |= {"new_key": key, "new_secret": secret}
    response = render(request, "accounts/me.html", context)
    response["Cache-Control"] = "no-store"  # the secret is shown once
    return response


@login_required
@require_POST
def revoke_key(request, key_id: int):
    if selfservice.revoke_own_key(user=request.user, key_id=key_id):
        messages.success(request, "Key revoked.")
    else:
        messages.error(request, "No such key of yours is active.")
    return redirect("self-service")
