/**
 * Cutting a client's or an event's text to a length, with no dependency: the services, the gateway and
 * the web shop (a page quoting a link) cut text the same way.
 */

/** `text` cut to at most `max` UTF-16 units, ending in "…" when cut, never through a surrogate pair. */
export function clipText(text: string, max: number): string {
  if (text.length <= max) return text;
  let end = max - 1;
  const last = text.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end--;
  return `${text.slice(0, end)}…`;
}
