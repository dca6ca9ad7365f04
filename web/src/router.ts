/**
 * Hash routes (the gateway serves files by exact path only, so the address
 * after `#` is the page's own): `#/` shop, `#/orders`, `#/orders/<id>`,
 * `#/notifications`, `#/operator`, `#/signin`.
 */

/** A page and its parameters. */
export type Route =
  | { readonly page: "shop" }
  | { readonly page: "orders" }
  | { readonly page: "order"; readonly id: string }
  | { readonly page: "notifications" }
  | { readonly page: "operator" }
  | { readonly page: "signin" }
  | { readonly page: "missing"; readonly path: string };

/**
 * What an order id can be (the services' id rule, `requireId` in platform/validate.ts): any other
 * text in a link, which anyone can send, is no order, and would be shown as the page's title —
 * direction overrides and all.
 */
const ORDER_ID = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

/** The route of `hash` (location.hash). */
export function parseRoute(hash: string): Route {
  const path = hash.replace(/^#/, "").replace(/\/+$/, "") || "/";
  if (path === "/" || path === "/shop") return { page: "shop" };
  if (path === "/orders") return { page: "orders" };
  if (path === "/notifications") return { page: "notifications" };
  if (path === "/operator") return { page: "operator" };
  if (path === "/signin") return { page: "signin" };
  const order = /^\/orders\/([^/]+)$/.exec(path);
  const id = order?.[1] ? decoded(order[1]) : undefined;
  if (id !== undefined && ORDER_ID.test(id)) return { page: "order", id };
  return { page: "missing", path };
}

/** `part` percent-decoded, or undefined when it is no valid escape (`%`, `%zz`, a cut UTF-8 sequence): a link anyone can send. */
function decoded(part: string): string | undefined {
  try {
    return decodeURIComponent(part);
  } catch {
    return undefined;
  }
}

/** The hash of an order's page. */
export function orderHref(id: string): string {
  return `#/orders/${encodeURIComponent(id)}`;
}
