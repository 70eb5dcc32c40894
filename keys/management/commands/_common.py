import json

from django.core.serializers.json import DjangoJSONEncoder

from keys.apis import KeyOutputSerializer


def key_json(api_key, raw_key: str | None = None) -> str:
    data = dict(KeyOutputSerializer(api_key).data)
    data["organization"] = api_key.organization.slug
    if raw_key is not None:
        data["key"] = raw_key
    return json.dumps(data, cls=DjangoJSONEncoder)
