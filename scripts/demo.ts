/**
 * `make demo`: places three orders against a running system (`make run`)
 * and prints each outcome with its saga step log:
 *   1. succeeds (stock reserved, payment captured, order confirmed);
 *   2. payment declined (stock released by compensation, order cancelled);
 *   3. out of stock (cancelled before any charge is attempted).
 * Earlier orders (the web shop, `make load`, earlier demos) may have used up the stock the first
 * two need, or a restock made the third's possible: it restocks what the first two need, as an
 * operator, and asks the third for one unit more than there is, saying so when it does.
 * ORDER_TARGET and INVENTORY_TARGET override the services' addresses (default 127.0.0.1:50053 and
 * :50051); SAGA_MODE=choreography runs the same three orders as a choreography.
 */
import { MAX_LINE_QUANTITY } from "../contracts/lines.js";
import { localTarget } from "../contracts/ports.js";
import { SagaMode } from "../gen/shopmesh/common/v1/common_pb.js";
import { InventoryService } from "../gen/shopmesh/inventory/v1/inventory_pb.js";
import { type Order, OrderService, OrderStatus, StepStatus } from "../gen/shopmesh/order/v1/order_pb.js";
import { RpcError } from "../platform/errors.js";
import { createChannel, createClient } from "../platform/grpc-client.js";
import { identityMetadata } from "../platform/identity.js";
import { quietWhenOutputCloses } from "./printable.js";

quietWhenOutputCloses();

// Empty is unset, as for the other commands' variables (ORDER_TARGET= was grpc-js's stack trace).
const target = process.env.ORDER_TARGET || localTarget("order");
// Anything else is refused: a misspelt SAGA_MODE=choreograhy ran the orchestrated saga, saying so only
// in passing, to one who meant to watch the choreography.
const modeName = (process.env.SAGA_MODE || "orchestration").toLowerCase();
if (modeName !== "orchestration" && modeName !== "choreography") {
  console.error(`SAGA_MODE must be orchestration or choreography, got ${JSON.stringify(process.env.SAGA_MODE)}`);
  process.exit(2);
}
const sagaMode = modeName === "choreography" ? SagaMode.CHOREOGRAPHY : SagaMode.ORCHESTRATION;
const inventoryTarget = process.env.INVENTORY_TARGET || localTarget("inventory");
const channel = createChannel(target);
const inventoryChannel = createChannel(inventoryTarget);
const orders = createClient(OrderService, channel);
const inventory = createClient(InventoryService, inventoryChannel);
const who = { metadata: identityMetadata({ subject: "demo-customer", roles: ["customer"] }) };
const operator = { metadata: identityMetadata({ subject: "demo-operator", roles: ["admin"] }) };
const run = Date.now().toString(36);
const tty = process.stdout.isTTY;
const paint = (code: number, s: string) => (tty ? `\x1b[${code}m${s}\x1b[0m` : s);

const SCENARIOS = [
  { title: "succeeds", items: [{ productId: "coffee-beans", quantity: 2 }], cardToken: "tok_visa" },
  {
    title: "payment declined -> compensated",
    items: [{ productId: "ceramic-mug", quantity: 1 }],
    cardToken: "tok_decline",
  },
  {
    title: "out of stock -> no charge attempted",
    items: [{ productId: "limited-print", quantity: 5 }],
    cardToken: "tok_visa",
  },
];

/** Units of `productId` available now. */
async function available(productId: string): Promise<number> {
  const { product } = await inventory.getProduct({ productId }, { ...who, timeoutMs: 5_000 });
  return product?.available ?? 0;
}

/** Stock for the first two scenarios, and more asked for than there is in the third. */
async function prepareStock(): Promise<void> {
  for (const { items } of SCENARIOS.slice(0, 2)) {
    for (const { productId, quantity } of items) {
      const short = quantity - (await available(productId));
      if (short <= 0) continue;
      const add = short + 20;
      await inventory.restock(
        { idempotencyKey: `demo-${run}-restock-${productId}`, productId, quantity: add },
        { ...operator, timeoutMs: 5_000 },
      );
      console.log(`restocked ${productId} (+${add}): earlier orders had used it up`);
    }
  }
  const [line] = SCENARIOS[2]?.items ?? [];
  if (!line) return;
  const more = (await available(line.productId)) + 1;
  if (more > MAX_LINE_QUANTITY) {
    console.log(`${line.productId} has more units than one order line may ask for: scenario 3 will not run out`);
  }
  line.quantity = Math.min(MAX_LINE_QUANTITY, Math.max(line.quantity, more));
}

function money(o: Order): string {
  if (!o.total) return "-";
  return `${o.total.currencyCode} ${(Number(o.total.amountMinor) / 100).toFixed(2)}`;
}

function print(n: number, title: string, o: Order): void {
  const status = OrderStatus[o.status];
  const color = o.status === OrderStatus.CONFIRMED ? 32 : 31;
  console.log(`\n${n}. ${title}`);
  console.log(`   order ${o.id}  ${paint(color, status)}  total ${money(o)}  (${SagaMode[o.sagaMode].toLowerCase()})`);
  if (o.statusReason) console.log(`   reason: ${o.statusReason}`);
  if (o.refundPending) console.log("   refund pending: payment is out of reach; the refund lands when it is back");
  for (const s of o.steps) {
    const st = StepStatus[s.status];
    const c = st === "FAILED" ? 31 : st === "COMPENSATED" ? 33 : st === "SUCCEEDED" ? 32 : 90;
    console.log(`     ${s.name.padEnd(15)} ${paint(c, st.padEnd(11))} ${s.detail}`.trimEnd());
  }
}

try {
  // Best effort: with inventory faulty or away, the orders are placed as they are and say why they end.
  await prepareStock().catch((err: unknown) => {
    const why = err instanceof RpcError ? err.codeName : (err as Error).message;
    console.log(`could not check the stock at ${inventoryTarget} (${why}); placing the orders anyway`);
  });
  console.log(
    `placing ${SCENARIOS.length} orders (${SagaMode[sagaMode].toLowerCase()}) through ${target} as demo-customer`,
  );
  for (const [i, sc] of SCENARIOS.entries()) {
    const { order } = await orders.placeOrder(
      { idempotencyKey: `demo-${run}-${i}`, items: sc.items, cardToken: sc.cardToken, sagaMode },
      { ...who, timeoutMs: 5_000 },
    );
    let last = order as Order;
    for await (const m of orders.watchOrder({ orderId: last.id }, { ...who, timeoutMs: 30_000 })) {
      if (m.order) last = m.order;
      // Ended for the customer; a refund still pending lands later (the watch would wait for it).
      if (last.status === OrderStatus.CONFIRMED || last.status === OrderStatus.CANCELLED) break;
    }
    if (sagaMode === SagaMode.CHOREOGRAPHY) {
      // Choreographed compensation follows the terminal state; give its events a moment to land.
      await new Promise((r) => setTimeout(r, 300));
      last = (await orders.getOrder({ orderId: last.id }, who)).order ?? last;
    }
    print(i + 1, sc.title, last);
  }
} catch (err) {
  if (err instanceof RpcError && err.codeName === "UNAVAILABLE") {
    console.error(
      `cannot reach the order service at ${target}: is \`make run\` running? (on other ports: ` +
        "ORDER_TARGET=127.0.0.1:<ORDER_PORT> INVENTORY_TARGET=127.0.0.1:<INVENTORY_PORT> make demo)",
    );
  } else {
    console.error(err instanceof Error ? err.message : err);
  }
  process.exitCode = 1;
} finally {
  channel.close();
  inventoryChannel.close();
}
