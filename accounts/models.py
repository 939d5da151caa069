"""Who may do what: people, teams, API keys, sign-in tokens and their policies.

A policy can sit on three layers: the credential (an API key), the person it belongs to, and
the team the call is billed to (the key's team, else the person's default team). A call is
admitted only when every layer allows it (docs/people.md).
"""

from __future__ import annotations

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models
from django.utils import timezone

from accounts import managed


class BudgetPeriod(models.TextChoices):
    DAY = "day", "Day (UTC)"
    WEEK = "week", "Week (UTC, from Monday)"
    MONTH = "month", "Month (UTC)"
    TOTAL = "total", "Lifetime"


class ReserveMode(models.TextChoices):
    WORST = "worst", "Worst case: the budget is never overshot"
    EXPECTED = "expected", "Expected cost: more concurrency, bounded overshoot"


def pattern_list(help_text: str) -> models.JSONField:
    """A policy list of a person or team: null means this layer does not restrict."""
    return models.JSONField(null=True, blank=True, default=None, help_text=help_text)


class LayerPolicy(models.Model):
    """What a person or a team may use, on top of each credential's own policy."""

    allowed_models = pattern_list('Model patterns such as "claude-sonnet-*". Empty: any model.')
    allowed_endpoints = pattern_list('Paths such as "/v1/messages". Empty: any endpoint.')
    allowed_tools = pattern_list(
        'Hosted tools such as "web_search*". Empty: no restriction here; sign-in tokens may '
        "use only the hosted tools a person or team lists."
    )
    rpm = models.PositiveIntegerField("requests per minute", null=True, blank=True)
    tpm = models.PositiveIntegerField("tokens per minute", null=True, blank=True)
    max_concurrent = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        abstract = True


class Team(LayerPolicy):
    name = models.CharField(max_length=100, unique=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, blank=True, related_name="teams")
    budget_usd = models.DecimalField(
        "budget (USD)",
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        help_text="Spend limit shared by every key of the team. Empty: no limit.",
    )
    budget_period = models.CharField(
        max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH
    )
    alert_webhook_url = models.URLField(
        blank=True, help_text="Receives a JSON POST when spend crosses 50, 80 and 100 %."
    )
    claude_code_settings = models.JSONField(
        "Claude Code managed settings",
        null=True,
        blank=True,
        default=None,
        help_text="A settings.json object that signed-in Claude Code of the team's members "
        "fetches from /managed/settings (docs/people.md). Empty: none.",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.claude_code_settings is not None:
            try:
                managed.validate(self.claude_code_settings)
            except ValidationError as error:
                raise ValidationError({"claude_code_settings": error.messages}) from None


class ApiKeyQuerySet(models.QuerySet):
    def active(self) -> ApiKeyQuerySet:
        now = timezone.now()
        return self.filter(revoked_at__isnull=True).filter(
            models.Q(expires_at__isnull=True) | models.Q(expires_at__gt=now)
        )


class ApiKey(models.Model):
    """A virtual key. The secret is shown once; only its prefix and HMAC digest are stored."""

    name = models.CharField(max_length=100)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="api_keys",
    )
    team = models.ForeignKey(
        Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="api_keys"
    )
    prefix = models.CharField(max_length=16, db_index=True, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)

    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=200, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    allowed_models = models.JSONField(
        default=list,
        blank=True,
        help_text='Model name patterns such as "claude-sonnet-*". Empty: every model.',
    )
    allowed_endpoints = models.JSONField(
        default=list,
        blank=True,
        help_text='Paths such as "/v1/messages" or "/v1/responses*". Empty: every endpoint.',
    )
    allowed_tools = models.JSONField(
        default=list,
        blank=True,
        help_text='Hosted (provider-run, billed) tools such as "web_search*". Client tools are '
        "always allowed. Empty: no hosted tools.",
    )
    allow_background = models.BooleanField(
        default=False,
        help_text="May start OpenAI background responses (background: true), which run on "
        "after the client is gone.",
    )
    rpm = models.PositiveIntegerField("requests per minute", null=True, blank=True)
    tpm = models.PositiveIntegerField("tokens per minute", null=True, blank=True)
    max_concurrent = models.PositiveIntegerField(null=True, blank=True)
    budget_usd = models.DecimalField(
        "budget (USD)", max_digits=12, decimal_places=4, null=True, blank=True
    )
    budget_period = models.CharField(
        max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH
    )
    alert_webhook_url = models.URLField(
        blank=True, help_text="Receives a JSON POST when spend crosses 50, 80 and 100 %."
    )
    reserve_mode = models.CharField(
        max_length=8,
        choices=ReserveMode.choices,
        default=ReserveMode.WORST,
        help_text="What admission holds against the budget while a request runs; see "
        "docs/operations.md for the overshoot bound of 'expected'.",
    )
    tags = models.JSONField(default=list, blank=True)
    metadata = models.JSONField(default=dict, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None

    def is_expired(self, now=None) -> bool:
        return self.expires_at is not None and self.expires_at <= (now or timezone.now())

    @property
    def is_active(self) -> bool:
        return not self.is_revoked and not self.is_expired()


class ApiToken(models.Model):
    """A person's token for the management API; stored like keys: prefix + HMAC digest."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"


class KeySecretFingerprint(models.Model):
    """Which digest secret the keys and API tokens are made with: one row holding
    HMAC(secret, "llmproxy key fingerprint"), never the secret itself.

    Recorded when the first key or token is made; a process whose LLMPROXY_KEY_HMAC_SECRET
    gives another fingerprint is refused to make keys the gateway would never accept.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1, editable=False)
    fingerprint = models.CharField(max_length=64)
    recorded_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "key secret fingerprint"

    def __str__(self) -> str:
        return f"key secret fingerprint {self.fingerprint[:12]}…"


class Person(LayerPolicy):
    """A person's own policy and budget: a Django user's side of llmproxy, made on demand."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, primary_key=True, on_delete=models.CASCADE, related_name="person"
    )
    default_team = models.ForeignKey(
        Team,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="The team a call is billed to when its credential names none.",
    )
    budget_usd = models.DecimalField(
        "budget (USD)", max_digits=12, decimal_places=4, null=True, blank=True,
        help_text="Spend limit across every key and sign-in of this person. Empty: no limit.",
    )  # fmt: skip
    budget_period = models.CharField(
        max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH
    )
    alert_webhook_url = models.URLField(
        blank=True, help_text="Receives a JSON POST when spend crosses 50, 80 and 100 %."
    )

    class Meta:
        verbose_name_plural = "people"

    def __str__(self) -> str:
        return self.user.get_username()


class SignInClient(models.TextChoices):
    CLAUDE_CODE = "claude_code", "Claude Code (/login)"
    CLI = "cli", "llmproxy login (Codex and scripts)"


class SignInTokenQuerySet(models.QuerySet):
    def live(self) -> SignInTokenQuerySet:
        return self.filter(revoked_at__isnull=True, expires_at__gt=timezone.now())


class SignInToken(models.Model):
    """A short-lived credential of a person, from a sign-in (OAuth device grant): an access
    token the proxy takes like a key, or the refresh token that replaces it. Stored as
    prefix + HMAC digest, like keys. Tokens of one sign-in share a ``family``: a refresh
    token used twice (stolen and replayed) revokes the whole family."""

    ACCESS = "access"
    REFRESH = "refresh"

    person = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sign_in_tokens"
    )
    client = models.CharField(max_length=16, choices=SignInClient.choices)
    kind = models.CharField(max_length=8, choices=[(ACCESS, "access"), (REFRESH, "refresh")])
    family = models.CharField(max_length=32, db_index=True, editable=False)
    prefix = models.CharField(max_length=16, editable=False)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True, editable=False)  # refresh: once
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_reason = models.CharField(max_length=200, blank=True)

    objects = SignInTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "sign-in token"

    def __str__(self) -> str:
        return f"{self.person} {self.client} {self.kind} ({self.prefix}…)"

    @property
    def is_live(self) -> bool:
        return self.revoked_at is None and self.expires_at > timezone.now()


class DeviceAuthorizationQuerySet(models.QuerySet):
    def pending(self) -> DeviceAuthorizationQuerySet:
        return self.filter(status=DeviceAuthorization.PENDING, expires_at__gt=timezone.now())


class DeviceAuthorization(models.Model):
    """One run of the OAuth 2.0 device grant (RFC 8628): a client (Claude Code's /login,
    ``llmproxy login``) asked to sign a person in, shows them a user code, and polls until
    the person approves or denies it on the /device page. Both codes are stored only as
    HMAC digests; the device code is single use."""

    PENDING = "pending"
    APPROVED = "approved"
    DENIED = "denied"
    USED = "used"  # tokens were issued for it
    STATUSES = [(PENDING, "pending"), (APPROVED, "approved"), (DENIED, "denied"), (USED, "used")]

    client = models.CharField(max_length=16, choices=SignInClient.choices)
    device_digest = models.CharField(max_length=64, unique=True, editable=False)
    user_digest = models.CharField(max_length=64, unique=True, editable=False)
    status = models.CharField(max_length=8, choices=STATUSES, default=PENDING)
    person = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="device_authorizations",
        help_text="Who approved or denied it.",
    )
    requested_from = models.GenericIPAddressField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    interval = models.PositiveSmallIntegerField(default=5)
    last_polled_at = models.DateTimeField(null=True, blank=True, editable=False)
    decided_at = models.DateTimeField(null=True, blank=True, editable=False)
    family = models.CharField(max_length=32, blank=True, editable=False)  # the tokens issued

    objects = DeviceAuthorizationQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "device sign-in"

    def __str__(self) -> str:
        return f"{self.get_client_display()} sign-in {self.status} ({self.created_at:%Y-%m-%d})"

    @property
    def is_expired(self) -> bool:
        return self.expires_at <= timezone.now()


class AuditVia(models.TextChoices):
    ADMIN = "admin", "admin"
    API = "api", "management API"
    COMMAND = "command", "management command"


class AuditAction(models.TextChoices):
    CREATE = "create", "created"
    UPDATE = "update", "changed"
    DELETE = "delete", "deleted"


class AuditEntry(models.Model):
    """One change made through the admin, the API or a management command: who, when, to
    what, and each changed field's old and new value (secrets redacted). Written by
    ``accounts.audit``, never edited: the admin and the API only read it."""

    at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text="Empty for a management command, or once the user is deleted.",
    )
    actor_name = models.CharField(
        max_length=150, help_text='The user name at the time, or e.g. "manage.py createkey".'
    )
    via = models.CharField(max_length=8, choices=AuditVia.choices)
    action = models.CharField(max_length=8, choices=AuditAction.choices)
    content_type = models.ForeignKey(
        "contenttypes.ContentType", on_delete=models.PROTECT, related_name="+"
    )
    object_id = models.CharField(max_length=64)
    object_repr = models.CharField(max_length=200)
    changes = models.JSONField(
        default=dict, blank=True, help_text='{"field": {"old": ..., "new": ...}}'
    )

    class Meta:
        ordering = ["-at", "-id"]
        verbose_name = "audit log entry"
        verbose_name_plural = "audit log"
        indexes = [models.Index(fields=["content_type", "object_id"], name="audit_object")]

    def __str__(self) -> str:
        return f"{self.actor_name} {self.get_action_display()} {self.object_repr}"


class Identity(models.Model):
    """A person's account at an OpenID provider: the issuer and subject (``sub``) name it for
    good, whatever the email says. Made on the first single sign-on."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="identities"
    )
    issuer = models.CharField(max_length=255)
    subject = models.CharField(max_length=255)
    email = models.EmailField(blank=True)
    groups = models.JSONField(default=list, blank=True, help_text="Groups at the last check.")
    # Encrypted (llmproxy.core.crypto): lets a sign-in token refresh ask the IdP again.
    refresh_token = models.TextField(blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    signed_in_at = models.DateTimeField(null=True, blank=True)
    checked_at = models.DateTimeField(
        null=True, blank=True, help_text="Last time the IdP confirmed the person may sign in."
    )

    class Meta:
        verbose_name_plural = "identities"
        constraints = [
            models.UniqueConstraint(fields=["issuer", "subject"], name="one_identity_per_subject")
        ]

    def __str__(self) -> str:
        return f"{self.email or self.subject} at {self.issuer}"


class IdpGroupMapping(models.Model):
    """People in an IdP group join a team, or become staff, at each single sign-on (on top of
    LLMPROXY_OIDC_GROUP_TEAMS, LLMPROXY_OIDC_STAFF_GROUPS and LLMPROXY_OIDC_SUPERUSER_GROUPS)."""

    idp_group = models.CharField("IdP group", max_length=200)
    team = models.ForeignKey(
        Team,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="idp_group_mappings",
        help_text="Members of the group are members of this team; leaving the group at the IdP "
        "leaves the team at the next sign-in.",
    )
    make_staff = models.BooleanField(
        default=False,
        help_text="Members of the group are staff: the dashboard, and the admin pages their "
        "Django permissions allow.",
    )
    make_superuser = models.BooleanField(
        default=False, help_text="Members of the group are superusers (every admin page)."
    )

    class Meta:
        ordering = ["idp_group"]
        verbose_name = "IdP group mapping"
        constraints = [
            models.UniqueConstraint(
                fields=["idp_group", "team"], name="one_mapping_per_group_team"
            ),
            models.CheckConstraint(
                condition=models.Q(team__isnull=False)
                | models.Q(make_staff=True)
                | models.Q(make_superuser=True),
                name="mapping_does_something",
            ),
        ]

    def __str__(self) -> str:
        what = [f"team {self.team}"] if self.team_id else []
        what += ["staff"] if self.make_staff else []
        what += ["superuser"] if self.make_superuser else []
        return f"{self.idp_group} → {', '.join(what)}"
