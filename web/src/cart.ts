/**
 * The cart and its checkout key. The cart lives in sessionStorage per user;
 * the idempotency key belongs to one checkout — the same lines, card and
 * saga mode — so a double click, a retry after a 503 or a reload of the same
 * checkout sends the same key and can never place a second order. Changing
 * the checkout, or a placed order, starts a new key.
 */

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

/** A user's cart. */
export class Cart {
  private lines = new Map<string, number>();
  private key: { fingerprint: string; key: string } | undefined;
  private readonly listeners = new Set<() => void>();

  constructor(private readonly storageKey: string) {
    try {
      const saved = JSON.parse(sessionStorage.getItem(storageKey) ?? "null") as {
        lines?: [string, number][];
        key?: { fingerprint: string; key: string };
      } | null;
      this.lines = new Map(saved?.lines ?? []);
      this.key = saved?.key;
    } catch {
      this.lines = new Map();
    }
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
    sessionStorage.setItem(this.storageKey, JSON.stringify({ lines: [...this.lines], key: this.key }));
  }
}
