"""A fake Stripe for the tests, reached through the real `stripe` library (STRIPE_API_BASE).

localstripe (PyPI) serves what it implements: Customers and Products. It has no Prices, Billing
Meters, Checkout or Billing Portal, and its subscriptions are the pre-Prices kind with one item, so
this front serves those itself, statefully, with Stripe's shapes and errors, and forwards every
other request to localstripe. Test-only routes under /_test/ stand for what happens on Stripe's
side: a customer paying on the Checkout page, a renewal failing, a fault answering 500.
"""

import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import httpx

MONTH = 30 * 24 * 3600


# How long Stripe remembers an Idempotency-Key, and a meter event's identifier as unique.
STRIPE_MEMORY_SECONDS = 24 * 3600


def unflatten(pairs: list[tuple[str, str]]) -> dict:
    """Stripe's form encoding (`a[b][0][c]=v`) back into nested dicts and lists."""
    root: dict = {}
    for key, value in pairs:
        parts = re.findall(r"[^\[\]]+", key)
        node = root
        for part, nxt in zip(parts, [*parts[1:], None], strict=True):
            if nxt is None:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _lists(root)


def _lists(node):
    if isinstance(node, dict):
        if node and all(k.isdigit() for k in node):
            return [_lists(node[k]) for k in sorted(node, key=int)]
        return {k: _lists(v) for k, v in node.items()}
    return node


def _id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(8)}"


def _error(status: int, message: str, kind: str = "invalid_request_error", code=None):
    return status, {"error": {"type": kind, "message": message, "code": code}}


def _bool(value) -> bool:
    return value in (True, "true", "True")


class FakeStripe:
    def __init__(self, localstripe_url: str):
        self.localstripe_url = localstripe_url
        self.lock = threading.Lock()
        self.prices: dict[str, dict] = {}
        self.meters: dict[str, dict] = {}
        self.meter_events: dict[str, dict] = {}
        self.checkout_sessions: dict[str, dict] = {}
        self.portal_sessions: dict[str, dict] = {}
        self.subscriptions: dict[str, dict] = {}
        self.idempotent: dict[tuple[str, str], tuple[int, dict]] = {}
        self.failures_left = 0  # the next this many API requests answer 500
        self.requests: list[tuple[str, str]] = []
        self.base_url = ""

    # --- routing ----------------------------------------------------------------------------

    def handle(self, method: str, path: str, params: dict, headers: dict):
        self.requests.append((method, path))
        if path.startswith("/_test/"):
            return self._test_route(method, path, params)
        if self.failures_left > 0:
            self.failures_left -= 1
            return _error(500, "Injected fault", "api_error")
        routes = [
            ("POST", r"/v1/prices", self.price_create),
            ("GET", r"/v1/prices", self.price_list),
            ("GET", r"/v1/prices/(?P<id>[\w-]+)", self.price_get),
            ("POST", r"/v1/billing/meters", self.meter_create),
            ("GET", r"/v1/billing/meters", self.meter_list),
            ("POST", r"/v1/billing/meter_events", self.meter_event_create),
            ("GET", r"/v1/billing/meters/(?P<id>[\w-]+)/event_summaries", self.meter_summaries),
            ("POST", r"/v1/checkout/sessions", self.checkout_create),
            ("GET", r"/v1/checkout/sessions/(?P<id>[\w-]+)", self.checkout_get),
            ("POST", r"/v1/billing_portal/sessions", self.portal_create),
            ("GET", r"/v1/subscriptions", self.subscription_list),
            ("GET", r"/v1/subscriptions/(?P<id>[\w-]+)", self.subscription_get),
            ("POST", r"/v1/subscriptions/(?P<id>[\w-]+)", self.subscription_update),
            ("DELETE", r"/v1/subscriptions/(?P<id>[\w-]+)", self.subscription_cancel),
        ]
        key = {k.lower(): v for k, v in headers.items()}.get("idempotency-key")
        for route_method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and method == route_method:
                with self.lock:
                    # Stripe answers a repeated Idempotency-Key with its first answer, for
                    # 24 hours (then the key is forgotten and the request runs again).
                    first = self.idempotent.get((path, key)) if key else None
                    if first is not None and time.time() - first[1] < STRIPE_MEMORY_SECONDS:
                        return first[0]
                    answer = handler(params, **match.groupdict())
                    if key and answer[0] < 500:
                        self.idempotent[(path, key)] = (answer, time.time())
                    return answer
        return None  # localstripe's

    # --- prices and meters ------------------------------------------------------------------

    def price_create(self, params):
        for field in ("currency", "product"):
            if not params.get(field):
                return _error(400, f"Missing required param: {field}.")
        lookup_key = params.get("lookup_key")
        if lookup_key:
            holder = [p for p in self.prices.values() if p["lookup_key"] == lookup_key]
            if holder and not _bool(params.get("transfer_lookup_key")):
                return _error(400, f"A price with lookup key {lookup_key} already exists.")
            for price in holder:
                price["lookup_key"] = None
        recurring = params.get("recurring")
        metered = recurring and recurring.get("usage_type") == "metered"
        if metered and recurring.get("meter") not in self.meters:
            return _error(400, "A metered price needs an existing meter.")
        price = {
            "id": _id("price"),
            "object": "price",
            "active": True,
            "currency": params["currency"],
            "product": params["product"],
            "lookup_key": lookup_key,
            "unit_amount": int(params["unit_amount"]) if "unit_amount" in params else None,
            "unit_amount_decimal": params.get("unit_amount_decimal", params.get("unit_amount")),
            "recurring": recurring
            and {
                "interval": recurring["interval"],
                "interval_count": 1,
                "usage_type": recurring.get("usage_type", "licensed"),
                "meter": recurring.get("meter"),
            },
            "transform_quantity": params.get("transform_quantity")
            and {
                "divide_by": int(params["transform_quantity"]["divide_by"]),
                "round": params["transform_quantity"]["round"],
            },
            "metadata": params.get("metadata", {}),
            "type": "recurring" if recurring else "one_time",
        }
        self.prices[price["id"]] = price
        return 200, price

    def price_list(self, params):
        prices = list(self.prices.values())
        if "lookup_keys" in params:
            prices = [p for p in prices if p["lookup_key"] in params["lookup_keys"]]
        if "active" in params:
            prices = [p for p in prices if p["active"] == _bool(params["active"])]
        return 200, _list(prices, "/v1/prices")

    def price_get(self, params, id):
        return (200, self.prices[id]) if id in self.prices else _missing("price", id)

    def meter_create(self, params):
        name = params.get("event_name")
        if any(m["event_name"] == name and m["status"] == "active" for m in self.meters.values()):
            return _error(400, f"An active meter with event_name {name} already exists.")
        meter = {
            "id": _id("mtr"),
            "object": "billing.meter",
            "display_name": params.get("display_name"),
            "event_name": name,
            "status": "active",
            "default_aggregation": params.get("default_aggregation"),
            "customer_mapping": params.get("customer_mapping"),
            "value_settings": params.get("value_settings"),
        }
        self.meters[meter["id"]] = meter
        return 200, meter

    def meter_list(self, params):
        meters = [m for m in self.meters.values() if m["status"] == params.get("status", "active")]
        return 200, _list(meters, "/v1/billing/meters")

    def meter_event_create(self, params):
        identifier = params.get("identifier") or _id("ident")
        slot = identifier
        if identifier in self.meter_events:
            if time.time() - self.meter_events[identifier]["created"] < STRIPE_MEMORY_SECONDS:
                return _error(
                    400, "An event already exists with identifier " + identifier, code="duplicate"
                )
            # Uniqueness holds for 24 hours: past that, the same identifier is a new event.
            slot = f"{identifier}#{len(self.meter_events)}"
        names = {m["event_name"] for m in self.meters.values()}
        if params.get("event_name") not in names:
            return _error(400, "No active meter for event_name " + str(params.get("event_name")))
        event = {
            "object": "billing.meter_event",
            "event_name": params["event_name"],
            "identifier": identifier,
            "payload": params.get("payload", {}),
            "timestamp": int(params.get("timestamp") or time.time()),
            "created": int(time.time()),
        }
        self.meter_events[slot] = event
        return 200, event

    def meter_summaries(self, params, id):
        """What the meter received from one customer in [start_time, end_time), summed over the
        whole range or per hour (`value_grouping_window=hour`), as Stripe's event summaries."""
        if id not in self.meters:
            return _missing("billing.meter", id)
        for field in ("customer", "start_time", "end_time"):
            if not params.get(field):
                return _error(400, f"Missing required param: {field}.")
        start, end = int(params["start_time"]), int(params["end_time"])
        hourly = params.get("value_grouping_window") == "hour"
        if hourly and (start % 3600 or end % 3600):
            return _error(400, "start_time and end_time must be aligned to the hour.")
        name = self.meters[id]["event_name"]
        sums: dict[int, float] = {}
        for event in self.meter_events.values():
            at = event["timestamp"]
            payload = event["payload"]
            if (
                event["event_name"] != name
                or payload.get("stripe_customer_id") != params["customer"]
            ):
                continue
            if start <= at < end:
                window = at - at % 3600 if hourly else start
                sums[window] = sums.get(window, 0) + float(payload.get("value", 0))
        summaries = [
            {
                "id": _id("mtrusg"),
                "object": "billing.meter_event_summary",
                "aggregated_value": value,
                "start_time": window,
                "end_time": window + 3600 if hourly else end,
                "livemode": False,
                "meter": id,
            }
            for window, value in sorted(sums.items())
        ]
        return 200, _list(summaries, f"/v1/billing/meters/{id}/event_summaries")

    # --- checkout, portal, subscriptions ----------------------------------------------------

    def checkout_create(self, params):
        if params.get("mode") != "subscription":
            return _error(400, "This fake serves subscription mode only.")
        for field in ("customer", "success_url", "line_items"):
            if not params.get(field):
                return _error(400, f"Missing required param: {field}.")
        for item in params["line_items"]:
            if item.get("price") not in self.prices:
                return _missing("price", item.get("price"))
        session = {
            "id": _id("cs_test"),
            "object": "checkout.session",
            "mode": "subscription",
            "status": "open",
            "customer": params["customer"],
            "client_reference_id": params.get("client_reference_id"),
            "metadata": params.get("metadata", {}),
            "line_items": params["line_items"],
            "subscription_data": params.get("subscription_data", {}),
            "success_url": params["success_url"],
            "cancel_url": params.get("cancel_url"),
            "subscription": None,
        }
        session["url"] = f"{self.base_url}/_test/checkout/{session['id']}"
        self.checkout_sessions[session["id"]] = session
        return 200, session

    def checkout_get(self, params, id):
        if id not in self.checkout_sessions:
            return _missing("checkout.session", id)
        return 200, self.checkout_sessions[id]

    def portal_create(self, params):
        if not params.get("customer"):
            return _error(400, "Missing required param: customer.")
        session = {
            "id": _id("bps"),
            "object": "billing_portal.session",
            "customer": params["customer"],
            "return_url": params.get("return_url"),
        }
        session["url"] = f"{self.base_url}/_test/portal/{session['id']}"
        self.portal_sessions[session["id"]] = session
        return 200, session

    def subscription_list(self, params):
        subs = [s for s in self.subscriptions.values() if s["customer"] == params.get("customer")]
        return 200, _list(subs, "/v1/subscriptions")

    def subscription_get(self, params, id):
        if id not in self.subscriptions:
            return _missing("subscription", id)
        return 200, self.subscriptions[id]

    def subscription_update(self, params, id):
        if id not in self.subscriptions:
            return _missing("subscription", id)
        sub = self.subscriptions[id]
        if "cancel_at_period_end" in params:
            sub["cancel_at_period_end"] = _bool(params["cancel_at_period_end"])
        if "items" in params:
            for change in params["items"]:
                item = next(i for i in sub["items"]["data"] if i["id"] == change["id"])
                item["price"] = self.prices[change["price"]]
        if "metadata" in params:
            sub["metadata"].update(params["metadata"])
        return 200, sub

    def subscription_cancel(self, params, id):
        if id not in self.subscriptions:
            return _missing("subscription", id)
        if self.subscriptions[id]["status"] == "canceled":  # as Stripe: an error, not a no-op
            return _error(400, f"The subscription {id} is already canceled.")
        self.subscriptions[id].update(status="canceled", ended_at=int(time.time()))
        return 200, self.subscriptions[id]

    def _subscribe(self, session: dict) -> dict:
        now = int(time.time())
        sub_id = _id("sub")
        items = [
            {
                "id": _id("si"),
                "object": "subscription_item",
                "subscription": sub_id,
                "price": self.prices[line["price"]],
                "quantity": int(line["quantity"]) if "quantity" in line else None,
                "current_period_start": now,
                "current_period_end": now + MONTH,
            }
            for line in session["line_items"]
        ]
        sub = {
            "id": sub_id,
            "object": "subscription",
            "customer": session["customer"],
            "status": "active",
            "cancel_at_period_end": False,
            "ended_at": None,
            "metadata": dict(session["subscription_data"].get("metadata", {})),
            "items": {"object": "list", "data": items, "has_more": False},
            "created": now,
        }
        self.subscriptions[sub_id] = sub
        return sub

    # --- Stripe's side, for the tests ---------------------------------------------------------

    def _test_route(self, method, path, params):
        with self.lock:
            if match := re.fullmatch(r"/_test/checkout/([\w-]+)/complete", path):
                session = self.checkout_sessions[match.group(1)]
                session["subscription"] = self._subscribe(session)["id"]
                session["status"] = "complete"
                return 200, session
            if match := re.fullmatch(r"/_test/subscriptions/([\w-]+)", path):
                sub = self.subscriptions[match.group(1)]
                for field in ("status", "cancel_at_period_end"):
                    if field in params:
                        sub[field] = params[field]
                return 200, sub
            if re.fullmatch(r"/_test/(checkout|portal)/[\w-]+", path):
                return 200, {"page": "a Stripe-hosted page"}
            if path == "/_test/fail":
                self.failures_left = int(params["count"])
                return 200, {}
        return _error(404, "unknown test route")


def _list(items: list, url: str) -> dict:
    return {"object": "list", "data": items, "has_more": False, "url": url}


def _missing(kind: str, id) -> tuple[int, dict]:
    return _error(404, f"No such {kind}: '{id}'", code="resource_missing")


class _Handler(BaseHTTPRequestHandler):
    fake: FakeStripe
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):
        pass

    def _serve(self):
        split = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        pairs = parse_qsl(split.query, keep_blank_values=True)
        if self.headers.get("Content-Type", "").startswith("application/json"):
            params = json.loads(body or b"{}")
        else:
            params = unflatten(pairs + parse_qsl(body.decode(), keep_blank_values=True))
            params.pop("expand", None)
        answer = self.fake.handle(self.command, split.path, params, dict(self.headers))
        if answer is None:
            status, payload = self._forward(split, body)
        else:
            status, data = answer
            payload = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Request-Id", _id("req"))
        self.end_headers()
        self.wfile.write(payload)

    def _forward(self, split, body: bytes) -> tuple[int, bytes]:
        headers = {
            k: v
            for k, v in self.headers.items()
            if k.lower() in ("authorization", "content-type", "idempotency-key")
        }
        url = self.fake.localstripe_url + split.path + (f"?{split.query}" if split.query else "")
        response = httpx.request(self.command, url, content=body, headers=headers, timeout=10)
        return response.status_code, response.content

    do_GET = do_POST = do_DELETE = _serve


class FakeStripeServer:
    def __init__(self, localstripe_url: str, port: int):
        self.fake = FakeStripe(localstripe_url)
        handler = type("Handler", (_Handler,), {"fake": self.fake})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{port}"
        self.fake.base_url = self.url
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def reset(self) -> None:
        """Forget everything, localstripe's state included: each test starts with an empty
        Stripe account."""
        with self.fake.lock:
            self.fake.__init__(self.fake.localstripe_url)
            self.fake.base_url = self.url
        httpx.delete(self.fake.localstripe_url + "/_config/data", timeout=10).raise_for_status()

    def test_call(self, path: str, **params) -> dict:
        response = httpx.post(self.url + path, data=params, timeout=10)
        response.raise_for_status()
        return response.json()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def sign(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    """The Stripe-Signature header exactly as Stripe computes it: HMAC-SHA256 of "t.payload"."""
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(type: str, obj: dict, *, event_id: str | None = None, created: int | None = None):
    """A webhook event of Stripe's shape around `obj`."""
    return {
        "id": event_id or _id("evt"),
        "object": "event",
        "api_version": "2026-10-28.endive",
        "created": created or int(time.time()),
        "livemode": False,
        "type": type,
        "data": {"object": obj},
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
    }
