/** The Idempotency-Key header's key: bare, or the draft's quoted sf-string. */
import { describe, expect, it } from "vitest";
import { headerKey } from "./idempotency-key.js";

describe("headerKey", () => {
  it("takes a bare value as it is, and a quoted String's content, unescaped", () => {
    expect(headerKey("rest-1")).toBe("rest-1");
    expect(headerKey('k"')).toBe('k"');
    expect(headerKey('"8e03978e-40d5-43e8-bc93-6894a57f9324"')).toBe("8e03978e-40d5-43e8-bc93-6894a57f9324");
    expect(headerKey('"a\\"b\\\\c"')).toBe('a"b\\c');
    expect(headerKey('""')).toBe("");
  });

  it("refuses a value that opens a quote but is not exactly one String", () => {
    for (const bad of ['"', '"abc', '"a\\x"', '"a"b"', '"a";p=1', '"a" ', '"a\\"', '"a\\'])
      expect(headerKey(bad), bad).toBeUndefined();
  });
});
