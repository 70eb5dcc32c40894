import json

from django.core.serializers.json import DjangoJSONEncoder

from keys.apis import KeyOutputSerializer
from keys.services import IssuedKey


def key_json(api_key, raw_key: str | None = None) -> str:
    data = dict(KeyOutputSerializer(api_key).data)
    data["organization"] = api_key.organization.slug
    if raw_key is not None:
        data["key"] = raw_key
    return json.dumps(data, cls=DjangoJSONEncoder)


def write_issued(command, issued: IssuedKey, headline: str, *, as_json: bool) -> None:
    """Print a new key the one time it is shown: JSON, or a headline and the key alone."""
    if as_json:
        command.stdout.write(key_json(issued.api_key, issued.raw_key))
        return
    command.stdout.write(headline)
    command.stdout.write("This is the only time the key is shown; store it now:")
    command.stdout.write(issued.raw_key)
