/**
 * The tab's sessionStorage, which may be full, refused or missing: a write that fails says so instead of
 * throwing, and a read that fails is nothing stored. What the page keeps there is a convenience for a
 * reload; the page works for its own life without it.
 */

/** What {@link readStored} returns for an entry that is no JSON: damaged, which no caller's shape matches. */
const unreadable: unique symbol = Symbol("unreadable");

/** The JSON stored under `key`: undefined when there is none (or storage is refused); a symbol when it is no JSON. */
export function readStored(key: string): unknown {
  let text: string | null;
  try {
    text = sessionStorage.getItem(key);
  } catch {
    return undefined;
  }
  if (text === null) return undefined;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return unreadable;
  }
}

/** Stores `value` as JSON under `key`; false when the browser refused it (full, or storage disabled). */
export function store(key: string, value: unknown): boolean {
  try {
    sessionStorage.setItem(key, JSON.stringify(value));
    return true;
  } catch {
    return false;
  }
}

/** Removes `key`, if the browser lets the page. */
export function forget(key: string): void {
  try {
    sessionStorage.removeItem(key);
  } catch {
    // Nothing the page could read back either.
  }
}
