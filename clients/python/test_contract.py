"""The gateway's public gRPC contract, seen from a Python client built only
from proto/: the catalogue, an idempotent order followed to CONFIRMED on the
server stream, a declined payment compensated, and the status codes a client
must be able to rely on (INVALID_ARGUMENT, ALREADY_EXISTS, UNAUTHENTICATED,
UNIMPLEMENTED for internal RPCs, NOT_FOUND for another customer's order)."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

import shopmesh_client as sm

UNARY_TIMEOUT = 5.0


def assert_code(err: pytest.ExceptionInfo[grpc.RpcError], expected: grpc.StatusCode) -> None:
    code, details = err.value.code(), err.value.details()
    assert code == expected, f"{code.name}: {details}"


def key() -> str:
    return f"py-{uuid.uuid4()}"


def place(channel, idempotency_key: str, product: str, quantity: int, card: str) -> sm.order.Order:
    orders = sm.order_grpc.OrderServiceStub(channel)
    req = sm.order.PlaceOrderRequest(
        idempotency_key=idempotency_key,
        items=[sm.common.LineItem(product_id=product, quantity=quantity)],
        card_token=card,
    )
    return orders.PlaceOrder(req, timeout=UNARY_TIMEOUT).order


def product(channel, product_id: str) -> sm.inventory.Product:
    products = sm.inventory_grpc.InventoryServiceStub(channel)
    return products.GetProduct(sm.inventory.GetProductRequest(product_id=product_id), timeout=UNARY_TIMEOUT).product


def steps(o: sm.order.Order) -> list[tuple[str, str]]:
    return [(s.name, sm.order.StepStatus.Name(s.status)) for s in o.steps]


def status(o: sm.order.Order) -> str:
    return sm.order.OrderStatus.Name(o.status)


def test_catalogue(customer):
    products = sm.inventory_grpc.InventoryServiceStub(customer)
    listed = products.ListProducts(sm.inventory.ListProductsRequest(page_size=100), timeout=UNARY_TIMEOUT).products
    assert listed, "the catalogue is empty"
    assert "coffee-beans" in [p.id for p in listed]

    beans = product(customer, "coffee-beans")
    assert beans.id == "coffee-beans"
    assert beans.name
    assert beans.unit_price.currency_code and beans.unit_price.amount_minor > 0


def test_idempotent_order_watched_to_confirmed(customer):
    k = key()
    first = place(customer, k, "coffee-beans", 2, "tok_visa")
    again = place(customer, k, "coffee-beans", 2, "tok_visa")
    assert first.id and again.id == first.id, "the same idempotency key and body must answer the same order"
    assert status(first) == "ORDER_STATUS_PENDING"

    seen = sm.watch(sm.order_grpc.OrderServiceStub(customer), first.id)
    statuses = [status(o) for o in seen]
    assert statuses[-1] == "ORDER_STATUS_CONFIRMED", statuses
    assert set(statuses) <= {"ORDER_STATUS_PENDING", "ORDER_STATUS_CONFIRMED"}, statuses
    final = seen[-1]
    assert final.id == first.id
    beans = product(customer, "coffee-beans")
    assert final.total.currency_code == beans.unit_price.currency_code
    assert final.total.amount_minor == 2 * beans.unit_price.amount_minor
    assert final.reservation_id and final.payment_id


def test_same_key_with_another_body_is_already_exists(customer):
    # The same key with a different body is a client bug, not a retry.
    k = key()
    place(customer, k, "coffee-beans", 1, "tok_visa")
    with pytest.raises(grpc.RpcError) as err:
        place(customer, k, "coffee-beans", 3, "tok_visa")
    assert_code(err, grpc.StatusCode.ALREADY_EXISTS)


def test_declined_payment_is_compensated(customer):
    before = product(customer, "coffee-beans").available
    placed = place(customer, key(), "coffee-beans", 1, "tok_decline")
    orders = sm.order_grpc.OrderServiceStub(customer)
    final = sm.watch(orders, placed.id)[-1]
    assert status(final) == "ORDER_STATUS_CANCELLED", steps(final)
    assert final.status_reason

    # Orchestrated, the release is in the log before CANCELLED; choreographed,
    # it may land just after: wait a little for it either way.
    deadline = time.monotonic() + 10
    while ("release_stock", "STEP_STATUS_COMPENSATED") not in steps(final) and time.monotonic() < deadline:
        time.sleep(0.1)
        final = orders.GetOrder(sm.order.GetOrderRequest(order_id=placed.id), timeout=UNARY_TIMEOUT).order
    log = steps(final)
    assert ("charge_payment", "STEP_STATUS_FAILED") in log, log
    assert ("release_stock", "STEP_STATUS_COMPENSATED") in log, log
    assert ("confirm_order", "STEP_STATUS_SUCCEEDED") not in log, log
    assert product(customer, "coffee-beans").available == before, "the reserved unit was not given back"


def test_bad_request_is_invalid_argument(customer):
    orders = sm.order_grpc.OrderServiceStub(customer)
    no_items = sm.order.PlaceOrderRequest(idempotency_key=key(), items=[], card_token="tok_visa")
    with pytest.raises(grpc.RpcError) as err:
        orders.PlaceOrder(no_items, timeout=UNARY_TIMEOUT)
    assert_code(err, grpc.StatusCode.INVALID_ARGUMENT)


@pytest.mark.parametrize("token", [None, "not-a-jwt"], ids=["no token", "forged token"])
def test_unauthenticated(gateway, token):
    channel = sm.connect(gateway, token)
    try:
        products = sm.inventory_grpc.InventoryServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            products.ListProducts(sm.inventory.ListProductsRequest(), timeout=UNARY_TIMEOUT)
        assert_code(err, grpc.StatusCode.UNAUTHENTICATED)
    finally:
        channel.close()


@pytest.mark.parametrize("rpc", ["ReserveStock", "ChargePayment"])
def test_internal_rpcs_do_not_exist_at_the_gateway(customer, rpc):
    # The stubs have them (one proto per service); the gateway does not route them.
    item = sm.common.LineItem(product_id="coffee-beans", quantity=1)
    calls = {
        "ReserveStock": lambda: sm.inventory_grpc.InventoryServiceStub(customer).ReserveStock(
            sm.inventory.ReserveStockRequest(idempotency_key=key(), order_id="ord_x", items=[item]),
            timeout=UNARY_TIMEOUT,
        ),
        "ChargePayment": lambda: sm.payment_grpc.PaymentServiceStub(customer).ChargePayment(
            sm.payment.ChargePaymentRequest(), timeout=UNARY_TIMEOUT
        ),
    }
    with pytest.raises(grpc.RpcError) as err:
        calls[rpc]()
    assert_code(err, grpc.StatusCode.UNIMPLEMENTED)


@pytest.fixture(scope="module")
def customers_order(customer) -> sm.order.Order:
    return place(customer, key(), "coffee-beans", 1, "tok_visa")


def test_another_customers_order_is_not_found(other_customer, customers_order):
    theirs = sm.order_grpc.OrderServiceStub(other_customer)
    with pytest.raises(grpc.RpcError) as err:
        theirs.GetOrder(sm.order.GetOrderRequest(order_id=customers_order.id), timeout=UNARY_TIMEOUT)
    assert_code(err, grpc.StatusCode.NOT_FOUND)


def test_another_customer_cannot_watch_the_order(customer, other_customer, customers_order):
    with pytest.raises(grpc.RpcError) as err:
        sm.watch(sm.order_grpc.OrderServiceStub(other_customer), customers_order.id)
    assert_code(err, grpc.StatusCode.NOT_FOUND)
    # The owner still follows it to the end.
    final = sm.watch(sm.order_grpc.OrderServiceStub(customer), customers_order.id)[-1]
    assert status(final) == "ORDER_STATUS_CONFIRMED"
