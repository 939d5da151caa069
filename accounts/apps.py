from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and keys"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group

        from accounts import audit
        from accounts.models import (
            ApiKey,
            ApiToken,
            Identity,
            IdpGroupMapping,
            Person,
            SignInToken,
            Team,
        )

        audit.track(ApiKey, secret={"digest"}, ignore={"last_used_at"})
        audit.track(ApiToken, secret={"digest"}, ignore={"last_used_at"})
        audit.track(SignInToken, secret={"digest"})
        audit.track(Team, m2m=["members"])
        audit.track(Person)
        audit.track(
            get_user_model(),
            secret={"password"},
            ignore={"last_login"},
            m2m=["groups", "user_permissions"],
        )
        audit.track(Group, m2m=["permissions"])
        # Single sign-on: who an IdP account is here, and what its groups grant.
        audit.track(Identity, secret={"refresh_token"}, ignore={"signed_in_at", "groups"})
        audit.track(IdpGroupMapping)
