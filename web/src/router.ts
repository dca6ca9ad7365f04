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

/** The route of `hash` (location.hash). */
export function parseRoute(hash: string): Route {
  const path = hash.replace(/^#/, "").replace(/\/+$/, "") || "/";
  if (path === "/" || path === "/shop") return { page: "shop" };
  if (path === "/orders") return { page: "orders" };
  if (path === "/notifications") return { page: "notifications" };
  if (path === "/operator") return { page: "operator" };
  if (path === "/signin") return { page: "signin" };
  const order = /^\/orders\/([^/]+)$/.exec(path);
  if (order?.[1]) return { page: "order", id: decodeURIComponent(order[1]) };
  return { page: "missing", path };
}

/** The hash of an order's page. */
export function orderHref(id: string): string {
  return `#/orders/${encodeURIComponent(id)}`;
}
