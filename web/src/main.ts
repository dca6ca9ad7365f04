/**
 * The web shop's entry: the shell (header, navigation, who is signed in),
 * the hash router that draws one page at a time into `<main>`, and the
 * session. Leaving a page aborts its signal, which stops its polls and
 * streams.
 */
import { clipText } from "../../platform/clip.js";
import { createApi } from "./api.js";
import { Cart } from "./cart.js";
import { h, replace } from "./dom.js";
import { notificationsPage } from "./notifications-page.js";
import { operatorPage } from "./operator-page.js";
import { orderPage } from "./order-page.js";
import { ordersPage } from "./orders-page.js";
import type { PageContext } from "./page.js";
import { parseRoute, type Route } from "./router.js";
import { clearSession, isOperator, loadSession, type Session } from "./session.js";
import { shopPage } from "./shop-page.js";
import { signInPage } from "./signin-page.js";
import { forget } from "./stored.js";
import { badge, pageTitle } from "./ui.js";

const TITLES: Readonly<Record<Route["page"], string>> = {
  shop: "Shop",
  orders: "My orders",
  order: "Order",
  notifications: "Notifications",
  operator: "Operator",
  signin: "Sign in",
  missing: "Not found",
};

const stored = loadSession();
let session: Session | undefined = stored.session;
let cart: Cart | undefined;
let page: AbortController | undefined;
/** Shown once on the sign-in page, e.g. why the user was signed out. */
let signInNote: string | undefined = stored.dropped
  ? "Your saved sign-in could not be used: sign in again."
  : undefined;

const api = createApi({
  baseUrl: location.origin,
  token: () => session?.token,
  onUnauthenticated: () => {
    if (!session) return;
    signOut("Your sign-in expired or was refused. Sign in again.");
  },
});

const header = h("header", { class: "topbar" });
const main = h("main", { id: "main", class: "main", tabindex: "-1" });
const skip = h(
  "a",
  {
    href: "#main",
    class: "skip-link",
    onclick: (e: Event) => {
      // A plain #main would be read as a route. The page's heading takes the focus: it shows a focus
      // ring (main itself draws none) and is what a screen reader should read first.
      e.preventDefault();
      (main.querySelector<HTMLElement>("h1") ?? main).focus();
    },
  },
  "Skip to content",
);

function signOut(note?: string): void {
  // The page's calls end now, not at the next render (a hashchange, a task later): the call that was
  // refused would otherwise draw its "Signed out" problem into a page still showing the user signed in.
  page?.abort();
  if (session) forget(`shopmesh.cart.${session.subject}`);
  clearSession();
  session = undefined;
  cart = undefined;
  signInNote = note;
  if (parseRoute(location.hash).page === "signin") render();
  else location.hash = "#/signin";
}

function navLink(href: string, label: string, active: boolean, testid: string): HTMLElement {
  return h("a", { href, class: "nav__link", "aria-current": active ? "page" : null, "data-testid": testid }, label);
}

function drawHeader(route: Route): void {
  const s = session;
  replace(
    header,
    h(
      "a",
      { href: "#/", class: "brand", "aria-label": "shopmesh home" },
      h("span", { class: "brand__mark", "aria-hidden": "true" }, "◆"),
      "shopmesh",
    ),
    s
      ? h(
          "nav",
          { class: "nav", "aria-label": "Main" },
          navLink("#/", "Shop", route.page === "shop", "nav-shop"),
          navLink("#/orders", "My orders", route.page === "orders" || route.page === "order", "nav-orders"),
          navLink("#/notifications", "Notifications", route.page === "notifications", "nav-notifications"),
          isOperator(s) ? navLink("#/operator", "Operator", route.page === "operator", "nav-operator") : null,
        )
      : null,
    s
      ? h(
          "div",
          { class: "who" },
          h(
            "span",
            { class: `avatar avatar--small avatar--${s.subject}`, "aria-hidden": "true" },
            s.subject.charAt(0).toUpperCase(),
          ),
          h(
            "span",
            { class: "who__text", "data-testid": "whoami" },
            h("span", { class: "visually-hidden" }, "Signed in as "),
            h("strong", {}, s.subject),
          ),
          badge(isOperator(s) ? "admin" : "customer", isOperator(s) ? "comp" : "info"),
          h(
            "button",
            {
              type: "button",
              class: "button button--ghost button--small",
              "data-testid": "sign-out",
              onclick: () => signOut(),
            },
            "Sign out",
          ),
        )
      : null,
  );
}

let firstRender = true;

function render(): void {
  page?.abort();
  page = new AbortController();
  const route = parseRoute(location.hash);
  drawHeader(route);
  const hadFocusInMain = main.contains(document.activeElement);
  if (!session) {
    document.title = "Sign in · shopmesh";
    const note = signInNote;
    signInNote = undefined;
    signInPage(
      main,
      (s) => {
        session = s;
        if (route.page === "signin") location.hash = "#/";
        else render();
      },
      note,
    );
  } else if (route.page === "signin") {
    location.hash = "#/";
    return;
  } else {
    cart ??= new Cart(`shopmesh.cart.${session.subject}`);
    document.title = `${TITLES[route.page]} · shopmesh`;
    const ctx: PageContext = {
      api,
      session,
      cart,
      signal: page.signal,
      root: main,
      go: (hash) => {
        location.hash = hash;
      },
    };
    switch (route.page) {
      case "shop":
        shopPage(ctx);
        break;
      case "orders":
        ordersPage(ctx);
        break;
      case "order":
        orderPage(ctx, route.id);
        break;
      case "notifications":
        notificationsPage(ctx);
        break;
      case "operator":
        operatorPage(ctx);
        break;
      case "missing":
        replace(
          main,
          pageTitle("Page not found"),
          h(
            "p",
            {},
            "There is nothing at ",
            // Its first 200 characters: a link is anyone's, and one may be 60 KB long.
            h("code", {}, clipText(route.path, 200)),
            ". ",
            h("a", { href: "#/" }, "Go to the shop"),
            ".",
          ),
        );
        break;
    }
  }
  // After a navigation, focus moves to the new page's heading (keyboard and screen-reader users).
  const navigated =
    !firstRender &&
    (hadFocusInMain || document.activeElement === document.body || header.contains(document.activeElement));
  if (navigated) main.querySelector<HTMLElement>("h1")?.focus({ preventScroll: true });
  firstRender = false;
  window.scrollTo(0, 0);
}

const app = document.getElementById("app");
if (app) {
  replace(
    app,
    skip,
    header,
    main,
    h(
      "footer",
      { class: "footer" },
      "shopmesh · every page is the gateway's public API: Connect over HTTP, the same contracts as every client.",
    ),
  );
  window.addEventListener("hashchange", render);
  render();
}
