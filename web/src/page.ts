/** What every page gets from the shell. */
import type { Api } from "./api.js";
import type { Cart } from "./cart.js";
import type { Session } from "./session.js";

/** A page's world while it is shown. */
export interface PageContext {
  readonly api: Api;
  readonly session: Session;
  readonly cart: Cart;
  /** Aborted when the user leaves the page: stop polling and streams. */
  readonly signal: AbortSignal;
  /** Where the page draws (the `<main>` element). */
  readonly root: HTMLElement;
  /** Goes to `hash`, e.g. "#/orders/ord_1". */
  go(hash: string): void;
}

/** Draws a page into `ctx.root`. */
export type Page = (ctx: PageContext) => void;
