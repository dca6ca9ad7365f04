/** Repeated member names in a token's JSON (jwt-members.ts): pure, no gateway. */
import { describe, expect, it } from "vitest";
import { base64urlBytes, repeatedInToken, repeatedMember } from "./jwt-members.js";

describe("repeatedMember", () => {
  it("finds a name an object holds twice, compared as decoded, at any depth", () => {
    expect(repeatedMember('{"sub":"mallory","iat":1,"sub":"alice"}')).toBe("sub");
    expect(repeatedMember('{"sub":"a","s\\u0075b":"b"}')).toBe("sub");
    expect(repeatedMember('{"roles":["customer"],"x":{"a":1,"a":2}}')).toBe("a");
    expect(repeatedMember('{"x":[{"a":1,"a":2}]}')).toBe("a");
    expect(repeatedMember(' { "sub" : "a" , "sub" : "b" } ')).toBe("sub");
  });

  it("takes values, array members and the same name in another object for what they are", () => {
    expect(repeatedMember('{"sub":"sub","aud":["sub","sub"]}')).toBeUndefined();
    expect(repeatedMember('{"a":{"b":1},"b":{"a":2},"c":[{"a":1},{"a":1}]}')).toBeUndefined();
    expect(repeatedMember('{"a":"x\\"","b":"\\\\","c":"\\"a\\":1"}')).toBeUndefined();
    expect(repeatedMember('{"a":"x\\"","a":"y"}')).toBe("a");
    expect(repeatedMember("{}")).toBeUndefined();
    expect(repeatedMember('{"a":[],"b":{},"c":null}')).toBeUndefined();
    // Not JSON (never reached: jose parses first), read to its end and no further.
    expect(repeatedMember('{"a":1,"b')).toBeUndefined();
    expect(repeatedMember('{"a":"\\')).toBeUndefined();
    expect(repeatedMember('{"\\x":1}')).toBeUndefined();
  });
});

describe("repeatedInToken", () => {
  const part = (s: string) => Buffer.from(s).toString("base64url");
  it("reads the protected header and the claims of a compact token", () => {
    expect(repeatedInToken(`${part('{"alg":"HS256"}')}.${part('{"sub":"a"}')}.sig`)).toBeUndefined();
    expect(repeatedInToken(`${part('{"alg":"none","alg":"HS256"}')}.${part('{"sub":"a"}')}.sig`)).toBe("alg");
    expect(repeatedInToken(`${part('{"alg":"HS256"}')}.${part('{"sub":"a","sub":"b"}')}.sig`)).toBe("sub");
  });
});

describe("base64urlBytes", () => {
  it("reads every text as Node's Buffer reads base64url, without Buffer (the web shop runs it in a browser)", () => {
    // Every length mod 4, both alphabets, padding, and characters no base64 has.
    const chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=. \n";
    let seed = 1;
    const next = () => (seed = (seed * 48271) % 2147483647);
    for (let n = 0; n < 20_000; n++) {
      const alphabet = n % 2 === 0 ? 64 : chars.length;
      const text = Array.from({ length: next() % 30 }, () => chars[next() % alphabet]).join("");
      expect(Buffer.from(base64urlBytes(text)).toString("hex"), JSON.stringify(text)).toBe(
        Buffer.from(text, "base64url").toString("hex"),
      );
    }
  });
});
