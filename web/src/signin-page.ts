/**
 * Sign-in for development: pick alice, bob or the operator and the gateway's
 * development sign-in hands out a token. Where that does not exist (the
 * gateway verifies real tokens), the page says so and takes a pasted token.
 */
import { h, replace, uid } from "./dom.js";
import { describeError } from "./errors.js";
import {
  DEV_USERS,
  devSignIn,
  type Session,
  SignInUnavailableError,
  saveSession,
  sessionFromToken,
} from "./session.js";
import { callout, markInvalid, pageTitle, problemBox, whileBusy } from "./ui.js";

/** `el` as an alert: a screen reader says it when it appears. */
function alerted(el: HTMLElement): HTMLElement {
  el.setAttribute("role", "alert");
  return el;
}

/** Draws the sign-in into `root`; `done` runs with the new session. */
export function signInPage(root: HTMLElement, done: (s: Session) => void, note?: string): void {
  const message = h("div", { "aria-live": "polite", class: "signin__message" });
  const buttons = DEV_USERS.map(({ user, label, note: role }) =>
    h(
      "button",
      {
        type: "button",
        class: "user-card",
        "data-testid": `signin-${user}`,
        "aria-label": `Sign in as ${label} (${role})`,
        onclick: () => void signIn(user),
      },
      h("span", { class: `avatar avatar--${user}`, "aria-hidden": "true" }, label.charAt(0)),
      h("span", { class: "user-card__name" }, label),
      h("span", { class: "user-card__role" }, role),
    ),
  );
  const tokenId = uid("token");
  const tokenInput = h("textarea", {
    id: tokenId,
    class: "input input--mono",
    rows: 3,
    spellcheck: "false",
    autocomplete: "off",
    placeholder: "eyJhbGciOi…",
    "data-testid": "token-input",
  });
  const pasted = h(
    "form",
    {
      class: "stack",
      "data-testid": "token-form",
      onsubmit: (e: Event) => {
        e.preventDefault();
        try {
          finish(sessionFromToken(tokenInput.value));
        } catch (err) {
          const why = alerted(callout("bad", "That token cannot be used", h("p", {}, (err as Error).message)));
          replace(message, why);
          markInvalid(tokenInput, why);
        }
      },
    },
    h("label", { for: tokenId }, "Or paste a token"),
    tokenInput,
    h("button", { type: "submit", class: "button button--ghost" }, "Use this token"),
  );

  function finish(s: Session) {
    saveSession(s);
    done(s);
  }

  async function signIn(user: string) {
    replace(
      message,
      h("p", { class: "loading", role: "status" }, h("span", { class: "spinner" }), `Signing in as ${user}…`),
    );
    await whileBusy(buttons, async () => {
      try {
        finish(await devSignIn(user));
      } catch (err) {
        if (err instanceof SignInUnavailableError) {
          replace(
            message,
            h(
              "div",
              { class: "callout callout--warn", role: "alert", "data-testid": "signin-unavailable" },
              h("strong", { class: "callout__title" }, "Sign-in is unavailable here"),
              h(
                "p",
                {},
                "This gateway checks tokens signed with a real key, so it hands out no development tokens. " +
                  "Ask whoever runs it for a token, or on a development checkout print one with ",
                h("code", {}, "make token USER=alice"),
                " (",
                h("code", {}, "ROLE=admin"),
                " for the operator), and paste it below.",
              ),
            ),
          );
        } else {
          replace(message, problemBox(describeError(err)));
        }
      }
    });
  }

  replace(
    root,
    h(
      "div",
      { class: "signin" },
      pageTitle("Sign in"),
      h(
        "p",
        { class: "lead" },
        "A development shop: choose who you are. Customers shop and follow their orders; the operator sees every service, restocks and injects faults.",
      ),
      // Why the user is here (signed out by a refused token) is said, not only shown.
      note ? alerted(callout("info", note)) : null,
      h("div", { class: "user-cards", role: "group", "aria-label": "Users" }, buttons),
      message,
      h("details", { class: "signin__paste" }, h("summary", {}, "I have a token"), pasted),
    ),
  );
}
