/**
 * The cart and its checkout key. The cart lives in sessionStorage per user;
 * the idempotency key belongs to one checkout — the same lines, card and
 * saga mode — so a double click, a retry after a 503 or a reload of the same
 * checkout sends the same key and can never place a second order. Changing
 * the checkout, or a placed order, starts a new key.
 */
import { readStored, store } from "./stored.js";

/** One cart line. */
export interface CartLine {
  readonly productId: string;
  readonly quantity: number;
}

/** What a checkout sends, apart from its key. */
export interface CheckoutRequest {
  readonly items: readonly CartLine[];
  readonly cardToken: string;
  readonly sagaMode: number;
}

/** A fresh idempotency key (randomUUID needs a secure context; getRandomValues does not). */
export function newKey(): string {
  if (typeof crypto.randomUUID === "function" && globalThis.isSecureContext) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
}

/** What {@link newKey} makes: a UUID, or 32 hex digits. */
const KEY_SHAPE = /^(?:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})$/;

/** The largest quantity the API can carry (int32); past 999 the order service judges it. */
const MAX_SENDABLE = 2 ** 31 - 1;

type Key = { fingerprint: string; key: string };

/**
 * The usable part of a stored cart: lines of a string product id and an integer quantity the API can
 * carry (one out of 0..999, from an older page or an edited entry, is sent as it is and refused by the
 * order service, naming it). `dropped` counts the lines left out, or is "all" for a cart not readable at all.
 */
function restoreCart(saved: unknown): { lines: Map<string, number>; key?: Key; dropped: number | "all" } {
  const lines = new Map<string, number>();
  if (saved === undefined || saved === null) return { lines, dropped: 0 };
  const s = saved as { lines?: unknown; key?: Partial<Key> };
  if (typeof saved !== "object" || Array.isArray(saved) || (s.lines !== undefined && !Array.isArray(s.lines))) {
    return { lines, dropped: "all" };
  }
  let dropped = 0;
  for (const l of (s.lines ?? []) as unknown[]) {
    const [id, q] = Array.isArray(l) ? l : [];
    if (typeof id === "string" && Number.isInteger(q) && Math.abs(q) <= MAX_SENDABLE) lines.set(id, q);
    else dropped += 1;
  }
  // A key the page did not make may be one the order service refuses (empty, spaced, too long): sent again
  // at every retry, that checkout could never be placed. A new one is made for it.
  const { fingerprint, key } = s.key ?? {};
  const kept = typeof fingerprint === "string" && typeof key === "string" && KEY_SHAPE.test(key);
  return { lines, key: kept ? { fingerprint, key } : undefined, dropped };
}

/** A user's cart. */
export class Cart {
  private lines: Map<string, number>;
  private key: Key | undefined;
  private readonly dropped: number | "all";
  private kept = true;
  private readonly listeners = new Set<() => void>();

  constructor(private readonly storageKey: string) {
    ({ lines: this.lines, key: this.key, dropped: this.dropped } = restoreCart(readStored(storageKey)));
  }

  /** What the user should know about the cart's storage: lines of the saved cart lost, or none kept. */
  note(): string | undefined {
    if (!this.kept) return "This browser cannot keep your cart: it lasts while this page is open.";
    if (this.dropped === "all") return "Your saved cart could not be read: it was emptied.";
    if (this.dropped === 1) return "1 line of your saved cart could not be read and was left out.";
    if (this.dropped > 1) return `${this.dropped} lines of your saved cart could not be read and were left out.`;
    return undefined;
  }

  /** The lines, in the order they were added. */
  items(): CartLine[] {
    return [...this.lines].map(([productId, quantity]) => ({ productId, quantity }));
  }

  /** Units of `productId` in the cart. */
  quantity(productId: string): number {
    return this.lines.get(productId) ?? 0;
  }

  /** Total units. */
  count(): number {
    let n = 0;
    for (const q of this.lines.values()) n += q;
    return n;
  }

  /** Sets the units of `productId`; 0 removes the line. */
  set(productId: string, quantity: number): void {
    const q = Math.max(0, Math.min(999, Math.floor(quantity)));
    if (q === 0) this.lines.delete(productId);
    else this.lines.set(productId, q);
    this.changed();
  }

  /** Adds one unit. */
  add(productId: string): void {
    this.set(productId, this.quantity(productId) + 1);
  }

  /** Empties the cart and forgets the checkout key (the order was placed). */
  clear(): void {
    this.lines.clear();
    this.key = undefined;
    this.changed();
  }

  /** The idempotency key of `req`: the same for the same checkout, new when it changed. */
  keyFor(req: CheckoutRequest): string {
    const fingerprint = JSON.stringify([req.items, req.cardToken, req.sagaMode]);
    if (this.key?.fingerprint !== fingerprint) {
      this.key = { fingerprint, key: newKey() };
      this.save();
    }
    return this.key.key;
  }

  /** Calls `fn` after every change; returns the unsubscribe. */
  subscribe(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  private changed(): void {
    this.save();
    for (const fn of this.listeners) fn();
  }

  private save(): void {
    this.kept = store(this.storageKey, { lines: [...this.lines], key: this.key });
  }
}
