"""A price saved or deleted by any path (the admin, a service, the cascade of a deleted model)
makes this process reload models and prices: billing sits below the gateway and does not
import it, so the gateway listens."""

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from aibaas.gateway.services import model_registry_invalidate
from billing.models import ModelPrice


@receiver(post_save, sender=ModelPrice, dispatch_uid="gateway-price-saved")
@receiver(post_delete, sender=ModelPrice, dispatch_uid="gateway-price-deleted")
def price_changed(sender, **kwargs) -> None:
    model_registry_invalidate()
