/**
 * Repeated member names in a JWT's JSON. RFC 7519 §4 lets a parser take the last of a repeated
 * claim or refuse the token; jose (JSON.parse) takes the last, another reader of the same token — the
 * ingress, a log pipeline, an auditor's tool — may take the first. `{"sub":"mallory",…,"sub":"alice"}`
 * was alice at the gateway: a credential two layers read differently identifies nobody, so it is refused.
 */

/**
 * The first member name that an object of `json` holds twice (compared as decoded: `"s\u0075b"` is
 * `sub`), at any depth; undefined when none is. `json` must be valid JSON (jose has parsed it).
 */
export function repeatedMember(json: string): string | undefined {
  // One entry per open container: the names an object has held so far, or null for an array.
  const open: Array<Set<string> | null> = [];
  let nameNext = false;
  for (let i = 0; i < json.length; i++) {
    const c = json[i];
    if (c === '"') {
      let end = i + 1;
      while (end < json.length && json[end] !== '"') end += json[end] === "\\" ? 2 : 1;
      if (end >= json.length) return undefined; // not JSON: jose, which parsed it, has already said so
      const names = open.at(-1);
      if (names && nameNext) {
        const name = nameAt(json.slice(i, end + 1));
        if (name === undefined) return undefined;
        if (names.has(name)) return name;
        names.add(name);
        nameNext = false;
      }
      i = end;
    } else if (c === "{") {
      open.push(new Set());
      nameNext = true;
    } else if (c === "[") {
      open.push(null);
    } else if (c === "}" || c === "]") {
      open.pop();
    } else if (c === ",") {
      nameNext = open.at(-1) != null;
    }
  }
  return undefined;
}

const decoder = new TextDecoder();
const BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/**
 * The bytes base64url `segment` spells, read as Node's `Buffer.from(segment, "base64url")` reads one
 * (no padding needed, bits short of a byte at the end dropped, other characters skipped), without
 * Buffer: the web shop reads a pasted token with it too (web/src/session.ts), in a browser.
 */
export function base64urlBytes(segment: string): Uint8Array {
  const out: number[] = [];
  let bits = 0;
  let acc = 0;
  for (const c of segment) {
    if (c === "=") break;
    const v = BASE64URL.indexOf(c === "+" ? "-" : c === "/" ? "_" : c);
    if (v < 0) continue;
    acc = ((acc << 6) | v) & 0xfff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push((acc >> bits) & 0xff);
    }
  }
  return Uint8Array.from(out);
}

/** The string JSON literal `literal` (quotes included) spells, or undefined when it is none. */
function nameAt(literal: string): string | undefined {
  try {
    return JSON.parse(literal) as string;
  } catch {
    return undefined;
  }
}

/** The first member name the protected header or the claims of compact JWS `token` repeat, or undefined. */
export function repeatedInToken(token: string): string | undefined {
  const [header = "", claims = ""] = token.split(".");
  // Decoded as jose decodes it (TextDecoder, U+FFFD for bytes that are not UTF-8), so both read one text.
  const text = (segment: string) => decoder.decode(base64urlBytes(segment));
  return repeatedMember(text(header)) ?? repeatedMember(text(claims));
}
