"""Any change to what the policy snapshot is built from invalidates it in every worker."""

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_migrate, post_save

from accounts.models import ApiKey, Person, SignInToken, Team
from billing.models import Price
from llmproxy.gateway import hotstore
from llmproxy.gateway.models import ModelRoute, Provider


def _bump() -> None:
    # After the commit: a gateway that reloads at once must read the change, not the row
    # as it was (the admin, the API and the services save inside transactions).
    transaction.on_commit(hotstore.bump_generation)


def _invalidate(**_kwargs) -> None:
    _bump()


def _revoked_or_removed(instance=None, **kwargs) -> None:
    """A new sign-in token needs no invalidation (nobody cached it); a revoked one does."""
    if instance is None or instance.revoked_at is not None:
        _bump()


def _person_changed(update_fields=None, **kwargs) -> None:
    """A sign-in's last_login stamp is not policy; anything else about a user may be."""
    if update_fields is None or set(update_fields) - {"last_login"}:
        _bump()


post_save.connect(_revoked_or_removed, sender=SignInToken, dispatch_uid="policy-save-token")
post_delete.connect(_revoked_or_removed, sender=SignInToken, dispatch_uid="policy-del-token")
# A person disabled: their keys and sign-ins stop at every gateway within a second.
post_save.connect(_person_changed, sender=get_user_model(), dispatch_uid="policy-save-user")
post_delete.connect(_invalidate, sender=get_user_model(), dispatch_uid="policy-del-user")

for _model in (ApiKey, Team, Person, Provider, ModelRoute, Price):
    post_save.connect(_invalidate, sender=_model, dispatch_uid=f"policy-save-{_model.__name__}")
    post_delete.connect(_invalidate, sender=_model, dispatch_uid=f"policy-del-{_model.__name__}")
m2m_changed.connect(_invalidate, sender=Team.members.through, dispatch_uid="policy-team-members")
# migrate inserts the shipped prices in bulk (no post_save): running gateways must see them.
post_migrate.connect(_invalidate, dispatch_uid="policy-after-migrate")
