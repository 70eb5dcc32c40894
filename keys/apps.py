from django.apps import AppConfig


class KeysConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "keys"

    def ready(self) -> None:
        from keys import schema, signals  # noqa: F401  (the OpenAPI auth extension; receivers)
