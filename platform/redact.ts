/** Secrets left out of what is printed and logged: a URL's password. */

/** `s` (`user:password@rest`) without its password, to its last "@"; unchanged when it has none. */
function maskUserinfo(s: string): string {
  const at = s.lastIndexOf("@");
  const colon = s.indexOf(":");
  if (at === -1 || colon === -1 || colon > at || /[/\s]/.test(s.slice(0, colon))) return s;
  return `${s.slice(0, colon)}:***${s.slice(at)}`;
}

/**
 * `raw` (one variable's value) with each URL's password left out, to the URL's last "@" (a generated one
 * holds "/", "@", "," unencoded: each ended it early, the rest printed); `user:pass@host`, `password=` too.
 * In one pass, not by a backtracking pattern: a long value is read once, whatever it holds.
 */
export function withoutPassword(raw: string): string {
  const starts: number[] = []; // where each "scheme://" URL begins
  for (let i = raw.indexOf("://"); i !== -1; i = raw.indexOf("://", i + 3)) {
    let b = i;
    while (b > (starts.at(-1) ?? 0) && /[\w+.-]/.test(raw[b - 1] as string)) b--;
    starts.push(b);
  }
  const head = raw
    .slice(0, starts[0] ?? raw.length)
    .split(",")
    .map(maskUserinfo)
    .join(",");
  const urls = starts.map((b, k) => {
    const url = raw.slice(b, starts[k + 1] ?? raw.length);
    const body = url.indexOf("://") + 3;
    return url.slice(0, body) + maskUserinfo(url.slice(body));
  });
  return (head + urls.join("")).replace(/([?&]password=)[^&]*/gi, "$1***");
}
