/**
 * Paging over a List RPC's page tokens: the next page's token comes from
 * the answer, the way back is the tokens already used.
 */
import { h } from "./dom.js";

/** Page tokens seen, and the buttons that move between pages. */
export function createPager(load: (pageToken: string) => void): {
  el: HTMLElement;
  /** Call with each answer's next_page_token. */
  loaded(nextPageToken: string): void;
  /** The token of the page being shown. */
  current(): string;
} {
  const tokens = [""];
  let index = 0;
  let next = "";
  const label = h("span", { class: "pager__label", "aria-live": "polite" });
  const prev = h(
    "button",
    {
      type: "button",
      class: "button button--ghost",
      "data-testid": "page-prev",
      onclick: () => {
        if (index === 0) return;
        index -= 1;
        load(tokens[index] ?? "");
      },
    },
    "← Newer",
  );
  const nextButton = h(
    "button",
    {
      type: "button",
      class: "button button--ghost",
      "data-testid": "page-next",
      onclick: () => {
        if (!next) return;
        index += 1;
        tokens[index] = next;
        tokens.length = index + 1;
        load(next);
      },
    },
    "Older →",
  );
  const el = h("nav", { class: "pager", "aria-label": "Pages" }, prev, label, nextButton);
  return {
    el,
    loaded(nextPageToken) {
      next = nextPageToken;
      const had = document.activeElement;
      prev.disabled = index === 0;
      nextButton.disabled = !next;
      // A disabled button loses the focus (to the top of the page): the other one takes it.
      if (had === nextButton && nextButton.disabled) prev.focus();
      else if (had === prev && prev.disabled) nextButton.focus();
      label.textContent = `Page ${index + 1}`;
    },
    current: () => tokens[index] ?? "",
  };
}
