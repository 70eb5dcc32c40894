from django.apps import AppConfig


class GatewayConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "aibaas.gateway"
    label = "gateway"
    verbose_name = "Gateway (models and upstreams)"

    def ready(self) -> None:
        from aibaas.gateway import signals  # noqa: F401  (price changes reload the registry)
