from django.apps import AppConfig


class MeteringConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "metering"

    def ready(self) -> None:
        from metering import checks  # noqa: F401 (registers the system checks)
