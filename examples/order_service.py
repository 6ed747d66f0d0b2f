"""An event-driven order service on one machine, with fastq only (no broker).

- a price service answers queries over request/reply (fastq.rpc),
- the shop publishes each order on the topic "orders" (after asking the price),
- two handler groups react to every order: billing (2 worker processes; an invalid
  order raises, is retried, then lands in the dead-letter queue) and shipping (an
  ``async def`` handler, 4 orders in flight),
- their results go to the queues "invoices" and "shipments".

Run: python examples/order_service.py [number of orders]
"""
import asyncio
import sys

import fastq
from fastq import rpc

PRICES = {"apple": 0.5, "pear": 0.75, "fig": 2.0}
SKUS = sorted(PRICES)


def quote(sku):
    """The price service's handler (a KeyError travels back to the caller)."""
    return PRICES[sku]


def bill(order):
    if order["qty"] <= 0:
        raise ValueError(f"order {order['id']}: quantity {order['qty']} is not positive")
    return {"order": order["id"], "amount": round(order["qty"] * order["price"], 2)}


async def ship(order):
    if order["qty"] <= 0:
        return None                       # nothing to ship, nothing published
    await asyncio.sleep(0.001)            # e.g. a call to a carrier's API
    return {"order": order["id"], "to": order["city"]}


def main(n):
    orders = fastq.Topic("orders")
    invoices, shipments = fastq.Queue("invoices"), fastq.Queue("shipments")
    dead = fastq.Queue("orders.dead")

    d = fastq.Dispatcher()
    d.on(orders, group="billing", workers=2, max_attempts=2, backoff=(0.01, 0.1),
         dead_letter=dead, publish_to=invoices)(bill)
    d.on(orders, group="shipping", concurrency=4, publish_to=shipments)(ship)

    with rpc.Server("prices", quote) as price_service, d:
        prices = rpc.Client("prices")
        try:
            prices.call("durian", timeout=10)
        except KeyError as e:
            print(f"price query for an unknown sku raised KeyError {e}")
        bad = 0
        for i in range(n):
            sku = SKUS[i % len(SKUS)]
            qty = -1 if i % 10 == 7 else 1 + i % 3       # every tenth order is invalid
            bad += qty <= 0
            orders.publish({"id": i, "sku": sku, "qty": qty, "price": prices.call(sku, timeout=10),
                            "city": "Lyon"})
        billed = [invoices.get(timeout=30) for _ in range(n - bad)]
        shipped = [shipments.get(timeout=30) for _ in range(n - bad)]
        dead_letters = [dead.get(timeout=30) for _ in range(bad)]

    print(f"{n} orders: {len(billed)} invoices ({sum(b['amount'] for b in billed):.2f} in all), "
          f"{len(shipped)} shipments, {len(dead_letters)} dead letters")
    for dl in dead_letters[:2]:
        print(f"  dead letter: order {dl.message['id']} from {dl.source!r} after {dl.attempts} "
              f"attempts: {dl.exc_type}: {dl.exc_message}")
    for q in (orders, invoices, shipments, dead, price_service.requests):
        q.unlink()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
