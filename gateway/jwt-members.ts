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
      while (json[end] !== '"') end += json[end] === "\\" ? 2 : 1;
      const names = open.at(-1);
      if (names && nameNext) {
        const name = JSON.parse(json.slice(i, end + 1)) as string;
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

/** The first member name the protected header or the claims of compact JWS `token` repeat, or undefined. */
export function repeatedInToken(token: string): string | undefined {
  const [header = "", claims = ""] = token.split(".");
  const text = (segment: string) => Buffer.from(segment, "base64url").toString("utf8");
  return repeatedMember(text(header)) ?? repeatedMember(text(claims));
}
