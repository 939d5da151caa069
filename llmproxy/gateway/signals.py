"""Any change to what the policy snapshot is built from invalidates it in every worker."""

from django.db.models.signals import m2m_changed, post_delete, post_migrate, post_save

from accounts.models import ApiKey, Team
from billing.models import Price
from llmproxy.gateway import hotstore
from llmproxy.gateway.models import ModelRoute, Provider


def _invalidate(**_kwargs) -> None:
    hotstore.bump_generation()


for _model in (ApiKey, Team, Provider, ModelRoute, Price):
    post_save.connect(_invalidate, sender=_model, dispatch_uid=f"policy-save-{_model.__name__}")
    post_delete.connect(_invalidate, sender=_model, dispatch_uid=f"policy-del-{_model.__name__}")
m2m_changed.connect(_invalidate, sender=Team.members.through, dispatch_uid="policy-team-members")
# migrate inserts the shipped prices in bulk (no post_save): running gateways must see them.
post_migrate.connect(_invalidate, dispatch_uid="policy-after-migrate")
