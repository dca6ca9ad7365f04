"""A small Python client for shopmesh's gateway over gRPC.

The gateway speaks gRPC over cleartext HTTP/2 on its one port (8080 under
`make run`); every public RPC wants `authorization: Bearer <jwt>`. `connect()`
opens a channel that adds that header to every call, and the generated stubs
(`./generate.sh`, into gen/) do the rest:

    import shopmesh_client as sm
    channel = sm.connect("127.0.0.1:8080", token)
    orders = sm.order_grpc.OrderServiceStub(channel)
    order = orders.PlaceOrder(sm.order.PlaceOrderRequest(...), timeout=5).order
    final = sm.watch(orders, order.id)[-1]

The stubs are generated from proto/ (the one source of contracts), never
committed; importing this module puts gen/ on the path.
"""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

import grpc

GEN = Path(__file__).resolve().parent / "gen"
if not GEN.is_dir():
    raise ImportError(f"{GEN} is missing: run {GEN.parent / 'generate.sh'} first")
if str(GEN) not in sys.path:
    sys.path.insert(0, str(GEN))

from shopmesh.common.v1 import common_pb2 as common  # noqa: E402
from shopmesh.inventory.v1 import inventory_pb2 as inventory  # noqa: E402
from shopmesh.inventory.v1 import inventory_pb2_grpc as inventory_grpc  # noqa: E402
from shopmesh.order.v1 import order_pb2 as order  # noqa: E402
from shopmesh.order.v1 import order_pb2_grpc as order_grpc  # noqa: E402
from shopmesh.payment.v1 import payment_pb2 as payment  # noqa: E402
from shopmesh.payment.v1 import payment_pb2_grpc as payment_grpc  # noqa: E402

__all__ = [
    "common",
    "connect",
    "inventory",
    "inventory_grpc",
    "order",
    "order_grpc",
    "payment",
    "payment_grpc",
    "watch",
]

TERMINAL = (order.ORDER_STATUS_CONFIRMED, order.ORDER_STATUS_CANCELLED)
# What a bearer token may hold (RFC 6750's b64token is narrower; a JWT is within both).
_TOKEN = re.compile(r"[\x21-\x7e]*")


class _CallDetails(
    collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")
    ),
    grpc.ClientCallDetails,
):
    pass


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call."""

    def __init__(self, token: str) -> None:
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, d: grpc.ClientCallDetails) -> _CallDetails:
        metadata = [*(d.metadata or ()), self._header]
        return _CallDetails(d.method, d.timeout, metadata, d.credentials, d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._with_token(client_call_details), request)


def connect(target: str, token: str | None = None) -> grpc.Channel:
    """A plaintext gRPC channel to the gateway at `target` ("host:port"; an
    http:// prefix and a trailing slash are dropped) that sends `token` as a
    bearer token on every call, or no authorization at all when `token` is
    None. The token is taken without surrounding whitespace (as read from a
    file, it ends in a newline); one with any other character that no header
    may carry raises ValueError, which never shows the token."""
    if token is not None:
        token = token.strip()
        if not _TOKEN.fullmatch(token):
            # grpc's own error would print the header, token and all, into the traceback.
            raise ValueError("token: must be printable ASCII without spaces (a JWT); not shown here")
    target = target.removeprefix("http://").rstrip("/")
    # grpc honours http_proxy; the gateway is reached directly.
    channel = grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)])
    return grpc.intercept_channel(channel, _Bearer(token)) if token else channel


def watch(orders: order_grpc.OrderServiceStub, order_id: str, timeout: float = 30.0) -> list[order.Order]:
    """Follows WatchOrder until the order is CONFIRMED or CANCELLED and
    returns every state it sent, oldest first. A CANCELLED order may still
    have `refund_pending` set (payment out of reach): its refund lands later,
    which GetOrder or another watch() shows (the stream itself stays open
    until then). Raises grpc.RpcError on a failed call or DEADLINE_EXCEEDED
    after `timeout` seconds."""
    call = orders.WatchOrder(order.WatchOrderRequest(order_id=order_id), timeout=timeout)
    states = []
    try:
        for m in call:
            states.append(m.order)
            if m.order.status in TERMINAL:
                break
    finally:
        call.cancel()
    return states
