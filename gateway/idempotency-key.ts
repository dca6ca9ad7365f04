/**
 * The key an `Idempotency-Key` header names. draft-ietf-httpapi-idempotency-key-header (§2.1) makes
 * the header an Item Structured Field whose value is a String (RFC 8941 §3.3.3), written quoted:
 * `Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`. Taken as it came, quotes and all, that
 * was another key than the one inside them, which Connect and gRPC callers send in the body: one
 * purchase retried over REST as the draft writes it and over Connect made two orders, and a Restock
 * added its units twice.
 */

/**
 * The key of header value `value`: the String inside the quotes when it opens with one (`\"` and
 * `\\` unescaped, RFC 8941 §4.2.5), else the value as it is (the bare form most APIs take, and this
 * gateway always has). Undefined for a value that opens a quote but is not exactly one String: not
 * closed, another escape, or anything after the closing quote (a parameter included).
 */
export function headerKey(value: string): string | undefined {
  if (!value.startsWith('"')) return value;
  let key = "";
  for (let i = 1; i < value.length; i++) {
    const c = value[i] as string;
    if (c === '"') return i === value.length - 1 ? key : undefined;
    if (c === "\\") {
      const escaped = value[++i];
      if (escaped !== '"' && escaped !== "\\") return undefined;
      key += escaped;
    } else key += c;
  }
  return undefined;
}
