/**
 * The text form's translation on its own (grpc-web-text.ts), with Envoy's grpc_web filter test
 * vectors: decoding in pieces of any size, padding between chunks, what is refused, and the
 * answer encoded piece by piece. The real-gateway cases are in grpc-web-text-http.test.ts.
 */
import { Code, ConnectError } from "@connectrpc/connect";
import { createAsyncIterable } from "@connectrpc/connect/protocol";
import { describe, expect, it } from "vitest";
import { bodyLimit, decodeGroups, decodeText, encodeText, webText } from "./grpc-web-text.js";

// Envoy's TEXT_MESSAGE and B64_MESSAGE (grpc_web_filter_test.cc).
const MESSAGE = Buffer.from("\x00\x00\x00\x00\x12grpc-web-text-data", "latin1");
const B64 = "AAAAABJncnBjLXdlYi10ZXh0LWRhdGE=";

async function decodeAll(pieces: string[], maxChars = Number.MAX_SAFE_INTEGER): Promise<Buffer> {
  const out: Uint8Array[] = [];
  const raw = createAsyncIterable(pieces.map((p) => Buffer.from(p, "latin1")));
  for await (const b of decodeText(raw, maxChars)) out.push(b);
  return Buffer.concat(out);
}

const refusal = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: unknown) => (e instanceof ConnectError ? e.code : e),
  );

describe("decodeText", () => {
  it("decodes Envoy's message fed one character at a time, and in every other piece size", async () => {
    for (let size = 1; size <= B64.length; size++) {
      const pieces = B64.match(new RegExp(`.{1,${size}}`, "g")) ?? [];
      expect((await decodeAll(pieces)).equals(MESSAGE), `pieces of ${size}`).toBe(true);
    }
  });

  it("yields each complete 4-character group as it arrives, holding back at most 3 characters", async () => {
    const yielded: number[] = [];
    const raw = createAsyncIterable(["AAAAA", "BJn", "cnBj"].map((s) => Buffer.from(s)));
    for await (const b of decodeText(raw, 12)) {
      yielded.push(b.byteLength);
    }
    expect(yielded).toEqual([3, 3, 3]);
  });

  it("decodes chunks concatenated with their padding, wherever the pieces cut", async () => {
    const joined = MESSAGE.subarray(0, 4).toString("base64") + MESSAGE.subarray(4).toString("base64");
    expect(joined.indexOf("=")).toBeLessThan(joined.length - 4);
    for (let size = 1; size <= 9; size++) {
      const pieces = joined.match(new RegExp(`.{1,${size}}`, "g")) ?? [];
      expect((await decodeAll(pieces)).equals(MESSAGE), `pieces of ${size}`).toBe(true);
    }
    expect(decodeGroups("AA==AAA=AAAA")).toEqual(Buffer.from([0, 0, 0, 0, 0, 0]));
  });

  it("refuses what is not base64 INVALID_ARGUMENT (Envoy: InvalidBase64, Base64NoPadding)", async () => {
    for (const bad of ["****", B64.slice(0, -1), "A===", "=AAA", "A=AA", "AA=A", "AA-_", "AA\nA", " AAA", "AAAA\r\n"]) {
      expect(await refusal(decodeAll([bad])), JSON.stringify(bad)).toBe(Code.InvalidArgument);
    }
    // An empty body is no base64 error: connect-es refuses the missing message itself.
    expect(await decodeAll([])).toHaveLength(0);
  });

  it("refuses a body longer than its limit in characters RESOURCE_EXHAUSTED, however little it decodes to", async () => {
    // A group padded to one byte ("AA==") is 4 characters a byte: its decoded length is no bound on the body.
    expect(await decodeAll(["AA==".repeat(5)], 20)).toHaveLength(5);
    expect(await refusal(decodeAll(["AA==".repeat(5), "AA=="], 20))).toBe(Code.ResourceExhausted);
    expect(await refusal(decodeAll(["AA==".repeat(5), "A"], 20))).toBe(Code.ResourceExhausted);
  });
});

describe("encodeText", () => {
  it("encodes each piece on its own, padding included, so that each decodes as it arrives", async () => {
    const out: string[] = [];
    const pieces = [MESSAGE.subarray(0, 7), MESSAGE.subarray(7), new Uint8Array()];
    for await (const b of encodeText(createAsyncIterable(pieces))) out.push(Buffer.from(b).toString("latin1"));
    expect(out).toEqual([MESSAGE.subarray(0, 7).toString("base64"), MESSAGE.subarray(7).toString("base64")]);
    expect(Buffer.concat(out.map((t) => Buffer.from(t, "base64"))).equals(MESSAGE)).toBe(true);
  });
});

describe("webText", () => {
  const types = (headers: Record<string, string>) => {
    const w = webText(headers);
    const answer = w.answer({ status: 200, header: new Headers({ "content-type": "application/grpc-web+proto" }) });
    return new Headers(answer.header).get("content-type");
  };

  it("answers text to a text request or to an Accept that names text, binary otherwise (PROTOCOL-WEB)", () => {
    expect(types({ "content-type": "application/grpc-web-text" })).toBe("application/grpc-web-text+proto");
    expect(types({ "content-type": "application/grpc-web-text+proto" })).toBe("application/grpc-web-text+proto");
    const binary = { "content-type": "application/grpc-web+proto" };
    expect(types({ ...binary, accept: "application/grpc-web-text" })).toBe("application/grpc-web-text+proto");
    expect(types({ ...binary, accept: "*/*, Application/GRPC-Web-Text+proto;q=0.5" })).toBe(
      "application/grpc-web-text+proto",
    );
    expect(types({ ...binary, accept: "application/grpc-web" })).toBe("application/grpc-web+proto");
    expect(types(binary)).toBe("application/grpc-web+proto");
    // Only gRPC-Web is translated: a Connect request that asks for text is answered as Connect.
    expect(webText({ "content-type": "application/json", accept: "application/grpc-web-text" }).answer).toBe(
      webText({}).answer,
    );
  });

  it("hands the handler a binary request", () => {
    const w = webText({ "content-type": "application/grpc-web-text+proto" });
    const header = new Headers({ "content-type": "application/grpc-web-text+proto", "content-length": "32" });
    const req = w.request(
      {
        httpVersion: "1.1",
        method: "POST",
        url: "http://x/",
        header,
        signal: new AbortController().signal,
        contextValues: undefined as never,
        body: createAsyncIterable([]),
      },
      4096,
    );
    expect(new Headers(req.header).get("content-type")).toBe("application/grpc-web+proto");
    expect(new Headers(req.header).has("content-length")).toBe(false);
  });

  it("frames a refusal as text: the trailers-only answer's content type", () => {
    const w = webText({ "content-type": "application/grpc-web-text" });
    const a = w.refusal({
      status: 200,
      headers: { "content-type": "application/grpc-web+proto", "grpc-status": "16" },
      body: new Uint8Array(),
    });
    expect(a).toEqual({
      status: 200,
      headers: { "content-type": "application/grpc-web-text+proto", "grpc-status": "16" },
      body: Buffer.alloc(0),
    });
  });
});

describe("bodyLimit", () => {
  it("is 4/3 of the limit for a text body (the base64 of the largest body binary takes), the limit otherwise", () => {
    expect(bodyLimit("application/grpc-web-text", 4096)).toBe(5464);
    expect(Buffer.alloc(4096).toString("base64")).toHaveLength(5464);
    expect(bodyLimit("application/grpc-web+proto", 4096)).toBe(4096);
    expect(bodyLimit(undefined, 4096)).toBe(4096);
  });
});
