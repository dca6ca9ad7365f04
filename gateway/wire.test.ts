/** The wire rules on synthetic answers: which errors are the client's, and how each protocol frames them. */
import { Code, ConnectError } from "@connectrpc/connect";
import { createAsyncIterable, type UniversalServerResponse } from "@connectrpc/connect/protocol";
import { describe, expect, it } from "vitest";
import { envelope, grpcWebTrailers } from "../test/raw.js";
import { connectHttpStatus, errorAnswer, finish, type Outcome, protocolOf, reclassify } from "./wire.js";

const bytes = (s: string) => new TextEncoder().encode(s);
async function drain(r: UniversalServerResponse): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const c of r.body ?? []) chunks.push(c);
  return Buffer.concat(chunks);
}

describe("protocolOf", () => {
  it("tells gRPC, gRPC-Web and Connect apart by content type", () => {
    expect(protocolOf("application/grpc")).toBe("grpc");
    expect(protocolOf("application/grpc+proto")).toBe("grpc");
    expect(protocolOf("application/grpc-web+proto")).toBe("grpc-web");
    expect(protocolOf("application/json")).toBe("connect");
    expect(protocolOf(undefined)).toBe("connect");
  });
});

describe("reclassify", () => {
  it("turns connect-es's server faults for malformed requests into INVALID_ARGUMENT, and nothing else", () => {
    expect(reclassify(Code.Internal, "parse binary: premature EOF")).toBe(Code.InvalidArgument);
    expect(reclassify(Code.Internal, "decompression failed")).toBe(Code.InvalidArgument);
    expect(reclassify(Code.Internal, "received compressed envelope, but do not know how to decompress")).toBe(
      Code.InvalidArgument,
    );
    expect(reclassify(Code.Unimplemented, "protocol error: missing input message for unary method")).toBe(
      Code.InvalidArgument,
    );
    expect(reclassify(Code.Internal, "internal error")).toBe(Code.Internal);
    expect(reclassify(Code.Unavailable, "parse binary: x")).toBe(Code.Unavailable);
    expect(reclassify(Code.Unimplemented, 'unknown compression "x"')).toBe(Code.Unimplemented);
  });
});

describe("connectHttpStatus", () => {
  it("is Connect's table, with 413 for a request too large and 415 for an unknown compression", () => {
    expect(connectHttpStatus(Code.ResourceExhausted, "x", true)).toBe(429);
    expect(connectHttpStatus(Code.ResourceExhausted, "x", false)).toBe(413);
    expect(connectHttpStatus(Code.Unimplemented, 'unknown compression "lz"', false)).toBe(415);
    expect(connectHttpStatus(Code.Unimplemented, "nope", false)).toBe(501);
    expect(connectHttpStatus(Code.InvalidArgument, "x", false)).toBe(400);
    expect(connectHttpStatus(Code.DeadlineExceeded, "x", false)).toBe(504);
  });
});

describe("errorAnswer", () => {
  const err = new ConnectError("slow down", Code.ResourceExhausted, { "retry-after": "2" });
  it("frames gRPC and gRPC-Web as trailers-only 200s", () => {
    for (const p of ["grpc", "grpc-web"] as const) {
      const a = errorAnswer(p, undefined, err);
      expect(a.status).toBe(200);
      expect(a.headers["grpc-status"]).toBe("8");
      expect(a.headers["retry-after"]).toBe("2");
      expect(a.body.byteLength).toBe(0);
    }
  });
  it("names the request's codec in a streaming answer's content type, as clients require", () => {
    const type = (p: "connect" | "grpc" | "grpc-web", t: string | undefined) =>
      errorAnswer(p, t, err).headers["content-type"];
    expect(type("connect", "application/connect+json")).toBe("application/connect+json");
    expect(type("connect", "application/connect+JSON; charset=utf-8")).toBe("application/connect+json");
    expect(type("connect", "application/connect+proto")).toBe("application/connect+proto");
    expect(type("connect", "application/json")).toBe("application/json");
    expect(type("grpc", "application/grpc+json")).toBe("application/grpc+json");
    expect(type("grpc", "application/grpc")).toBe("application/grpc+proto");
    expect(type("grpc-web", "application/grpc-web+json")).toBe("application/grpc-web+json");
    expect(type("grpc-web", "application/grpc-web+jsonx")).toBe("application/grpc-web+proto");
  });
  it("frames Connect unary as JSON with its HTTP status, and Connect streams as an end-stream envelope", () => {
    const unary = errorAnswer("connect", undefined, err);
    expect(unary.status).toBe(429);
    expect(JSON.parse(Buffer.from(unary.body).toString())).toEqual({
      code: "resource_exhausted",
      message: "slow down",
    });
    expect(errorAnswer("connect", undefined, new ConnectError("no", Code.Unimplemented), 404).status).toBe(404);
    const stream = errorAnswer("connect", "application/connect+proto", err);
    expect(stream.status).toBe(200);
    expect(stream.headers["content-type"]).toBe("application/connect+proto");
    expect(stream.body[0]).toBe(2);
    expect(JSON.parse(Buffer.from(stream.body.subarray(5)).toString()).error.code).toBe("resource_exhausted");
  });
});

describe("finish", () => {
  it("corrects a Connect unary parse error to 400 and reports it", async () => {
    let outcome: Outcome | undefined;
    const body = bytes(JSON.stringify({ code: "internal", message: "parse binary: premature EOF" }));
    const r = await finish(
      { status: 500, header: new Headers({ "content-type": "application/json" }), body: createAsyncIterable([body]) },
      "connect",
      (o) => {
        outcome = o;
      },
    );
    expect(r.status).toBe(400);
    expect(JSON.parse((await drain(r)).toString()).code).toBe("invalid_argument");
    expect(outcome?.code).toBe(Code.InvalidArgument);
  });

  it("corrects gRPC trailers once the body has been sent", async () => {
    const trailer = new Headers({ "grpc-status": "13", "grpc-message": encodeURIComponent("parse binary: bad tag") });
    let outcome: Outcome | undefined;
    const r = await finish({ status: 200, body: createAsyncIterable([]), trailer }, "grpc", (o) => {
      outcome = o;
    });
    await drain(r);
    expect(r.trailer?.get("grpc-status")).toBe("3");
    expect(outcome?.code).toBe(Code.InvalidArgument);
  });

  it("corrects the gRPC-Web trailer envelope, and reports OK for a clean answer", async () => {
    const trailer = envelope(bytes("grpc-status: 13\r\ngrpc-message: parse%20binary%3A%20x\r\n"), 0x80);
    const r = await finish(
      { status: 200, header: new Headers(), body: createAsyncIterable([trailer]) },
      "grpc-web",
      () => {},
    );
    expect(grpcWebTrailers(await drain(r))["grpc-status"]).toBe("3");
    let ok: Outcome | undefined;
    const clean = envelope(bytes("grpc-status: 0\r\n"), 0x80);
    await drain(
      await finish({ status: 200, header: new Headers(), body: createAsyncIterable([clean]) }, "grpc-web", (o) => {
        ok = o;
      }),
    );
    expect(ok?.code).toBe(0);
  });
});
