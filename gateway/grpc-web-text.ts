/**
 * gRPC-Web's text form (PROTOCOL-WEB.md, "Text-encoded (response) streams"): the body of
 * `application/grpc-web-text` is the base64 of gRPC-Web's frames, and so is the answer when the
 * request is text or its Accept names `application/grpc-web-text`. Google's grpc-web client sends
 * it by default (`mode=grpcwebtext`), and needs it for server streaming.
 *
 * It is translated to and from the binary form in front of the general path, as Envoy's grpc_web
 * filter does in front of a gRPC server: connect-es, the limits, the token, the access line and the
 * metrics see a gRPC-Web binary call. The request is decoded one complete 4-character group at a
 * time, whatever size its pieces arrive in, padding allowed at the end of any group (base64 chunks
 * concatenated); anything else is INVALID_ARGUMENT. Each piece of the answer is encoded on its own,
 * padding included, so the client can decode it as it arrives: a stream's messages, and its trailer
 * frame (0x80), reach it as they happen.
 */
import type { IncomingHttpHeaders } from "node:http";
import { Code, ConnectError } from "@connectrpc/connect";
import type { UniversalServerRequest, UniversalServerResponse } from "@connectrpc/connect/protocol";
import type { ErrorAnswer } from "./wire.js";

const BINARY = "application/grpc-web";
const TEXT = "application/grpc-web-text";

/** A gRPC-Web call's translation between the text form its client speaks and the binary form served. */
export interface WebText {
  /** The request as gRPC-Web binary: its content type, and its body decoded ({@link bodyLimit} of `maxBodyBytes`). */
  request(uReq: UniversalServerRequest, maxBodyBytes: number): UniversalServerRequest;
  /** The handler's answer in the form the client asked for. */
  answer(uRes: UniversalServerResponse): UniversalServerResponse;
  /** An answer given before any handler ran, in the form the client asked for. */
  refusal(a: ErrorAnswer): ErrorAnswer;
}

/** Everything as it is: not gRPC-Web text either way. */
const AS_IS: WebText = { request: (r) => r, answer: (r) => r, refusal: (a) => a };

/** True for a request body in the text form (`application/grpc-web-text`, `+proto`, ...). */
const isText = (contentType: string | undefined): boolean => contentType?.startsWith(TEXT) ?? false;

/** True when an Accept header names `application/grpc-web-text` (or one of its `+codec` forms). */
function acceptsText(accept: string | undefined): boolean {
  const ranges = accept?.toLowerCase();
  if (!ranges?.includes(TEXT)) return false;
  return ranges.split(",").some((range) => range.split(";", 1)[0]?.trim().startsWith(TEXT));
}

/** `application/grpc-web+proto` as `application/grpc-web-text+proto` (any other type as it is). */
const asText = (type: string | null): string | null =>
  type?.startsWith(BINARY) && !type.startsWith(TEXT) ? TEXT + type.slice(BINARY.length) : type;

/** The translation a request with `headers` needs: none unless it is gRPC-Web and text in or out. */
export function webText(headers: IncomingHttpHeaders): WebText {
  const type = headers["content-type"];
  if (!type?.startsWith(BINARY)) return AS_IS;
  const textIn = isText(type);
  if (!textIn && !acceptsText(headers.accept)) return AS_IS;
  return {
    request(uReq, maxBodyBytes) {
      if (!textIn) return uReq;
      const header = new Headers(uReq.header);
      header.set("content-type", BINARY + type.slice(TEXT.length));
      header.delete("content-length"); // the length of the base64, not of what is served
      const body = decodeText(uReq.body as AsyncIterable<Uint8Array>, bodyLimit(type, maxBodyBytes));
      return { ...uReq, header, body };
    },
    answer(uRes) {
      const header = new Headers(uRes.header);
      const answered = header.get("content-type");
      // A bare refusal (405, 415) has no content type, and no body to encode.
      if (!answered?.startsWith(BINARY)) return uRes;
      header.set("content-type", asText(answered) ?? answered);
      header.delete("content-length");
      return { ...uRes, header, body: uRes.body && encodeText(uRes.body) };
    },
    refusal(a) {
      const type = asText(a.headers["content-type"] ?? null);
      if (!type) return a;
      const body = Buffer.from(Buffer.from(a.body).toString("base64"), "latin1");
      return { ...a, headers: { ...a.headers, "content-type": type }, body };
    },
  };
}

/**
 * The largest request body to take for a request of `contentType` when messages may be `max` bytes:
 * a text body is the base64 of the frames, 4 characters for every 3 bytes, so it may be 4/3 as long
 * (the same message is taken in either form).
 */
export function bodyLimit(contentType: string | undefined, max: number): number {
  return isText(contentType) ? Math.ceil(max / 3) * 4 : max;
}

const invalid = (why: string) =>
  new ConnectError(`the gRPC-Web text request body is not valid base64: ${why}`, Code.InvalidArgument);

/** The base64 alphabet of RFC 4648 §4 (not the URL-safe one, and no whitespace), and a group that ends padded. */
const ALPHABET = /^[A-Za-z0-9+/]*$/;
const PADDED = /^[A-Za-z0-9+/]{2}(?:==|[A-Za-z0-9+/]=)$/;

/** Whole 4-character groups, decoded; padding may end any group (Node's decoder stops at the first "="). */
export function decodeGroups(text: string): Buffer {
  const parts: Buffer[] = [];
  let from = 0;
  for (let pad = text.indexOf("="); pad >= 0; pad = text.indexOf("=", from)) {
    const end = (Math.floor(pad / 4) + 1) * 4;
    if (!PADDED.test(text.slice(end - 4, end))) throw invalid("padding other than at the end of a 4-character group");
    if (!ALPHABET.test(text.slice(from, end - 4))) throw invalid("a character outside the base64 alphabet");
    parts.push(Buffer.from(text.slice(from, end), "base64"));
    from = end;
  }
  const rest = text.slice(from);
  if (!ALPHABET.test(rest)) throw invalid("a character outside the base64 alphabet");
  parts.push(Buffer.from(rest, "base64"));
  return parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
}

/**
 * A text request body as the binary frames it holds, decoded as each complete 4-character group
 * arrives (a piece's last 1 to 3 characters wait for the next piece). A body whose length is not a
 * multiple of 4 is refused at its end: base64 padding is mandatory (Envoy). One past `maxChars`
 * characters is RESOURCE_EXHAUSTED, as a declared length past it is: what it decodes to is no bound,
 * a group padded to one byte ("AA==") being 4 characters a byte. Streamed, such a body was taken to
 * 4 times the limit, 16 MiB at 4 MiB, 1.9 s of the gateway's CPU (the limit's plain base64: 0.03 s).
 */
export async function* decodeText(raw: AsyncIterable<Uint8Array>, maxChars: number): AsyncIterable<Uint8Array> {
  let held = "";
  let seen = 0;
  for await (const piece of raw) {
    seen += piece.byteLength;
    if (seen > maxChars) {
      throw new ConnectError(
        `the gRPC-Web text request body exceeds the limit of ${maxChars} characters`,
        Code.ResourceExhausted,
      );
    }
    const text = held + Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength).toString("latin1");
    const whole = text.length - (text.length % 4);
    held = text.slice(whole);
    if (whole > 0) yield decodeGroups(text.slice(0, whole));
  }
  if (held.length > 0) throw invalid(`a length that is not a multiple of 4 (${held.length} characters left over)`);
}

/** Each piece of an answer base64-encoded on its own, padding included: decodable as it arrives. */
export async function* encodeText(body: AsyncIterable<Uint8Array>): AsyncIterable<Uint8Array> {
  for await (const piece of body) {
    if (piece.byteLength === 0) continue;
    const text = Buffer.from(piece.buffer, piece.byteOffset, piece.byteLength).toString("base64");
    yield Buffer.from(text, "latin1");
  }
}
