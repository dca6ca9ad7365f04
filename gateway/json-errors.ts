/**
 * protobuf-es's JSON errors, told in the client's terms: the field, not the Go-style type path —
 * `cannot decode field shopmesh.order.v1.PlaceOrderRequest.card_token from JSON: 5` becomes
 * `card_token: 5` (a oneof set twice likewise), and an element of a list of messages that is not
 * an object, which protobuf-es names by its type alone (`cannot decode message
 * shopmesh.order.v1.LineItem from JSON: 1`), is named by the field that holds it: `items: each
 * element must be a LineItem object, got 1`; so is an enum value that is not one (`saga_mode: "NOPE"
 * is not a SagaMode value`), and a well-known type that is not one, whose JSON is no object
 * (`at: not a valid google.protobuf.Timestamp (invalid RFC 3339 string)`), and an unknown key in a
 * nested message (`items: key "unit" is unknown`). Where several fields hold
 * the type the error names, all are named (`at or times`): protobuf-es does not say which. A field
 * of a nested message is named by its path (`items.quantity`), a key given twice or unknown at the
 * top as the client wrote it (`cardToken`), each in a google.rpc.BadRequest detail as well (one
 * violation per field named); a body that is not JSON names no field, and says so.
 */
import type { DescField, DescMessage } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema } from "../gen/google/rpc/error_details_pb.js";
import { clipText } from "../platform/validate.js";

/** How deep {@link fieldsOfType} looks: request messages nest a few levels, recursive ones for ever. */
const MAX_DEPTH = 8;

/** The fields under `input` (breadth first, each path once, no type inside itself) holding `typeName`: a message or an enum. */
function fieldsOfType(input: DescMessage, typeName: string): { path: string; field: DescField }[] {
  type Next = { message: DescMessage; prefix: string; within: ReadonlySet<string> };
  const queue: Next[] = [{ message: input, prefix: "", within: new Set([input.typeName]) }];
  const found: { path: string; field: DescField }[] = [];
  for (let next = queue.shift(); next; next = queue.shift()) {
    for (const field of next.message.fields) {
      const path = `${next.prefix}${field.name}`;
      if ((field.message ?? field.enum)?.typeName === typeName) found.push({ path, field });
      else if (field.message && !next.within.has(field.message.typeName) && next.within.size < MAX_DEPTH) {
        const within = new Set(next.within).add(field.message.typeName);
        queue.push({ message: field.message, prefix: `${path}.`, within });
      }
    }
  }
  return found;
}

/**
 * Longest message told: an unknown key is quoted in it, and a client may send a 900 KB one. Over gRPC
 * the message is a trailer twice (`grpc-message` percent-encoded, up to 9 bytes a character, and
 * inside `grpc-status-details-bin` in base64 with the detail's description), and grpc-java and
 * grpc-go refuse a header block over 8 KiB: at 200, a message of three-byte characters with its
 * detail stays under 4 KiB.
 */
const MAX_MESSAGE = 200;
/** Longest field a violation names: an unknown key is the client's text. */
const MAX_FIELD = 100;

/** What was wrong: the fields it names (none when none can be), why, and the message when not `fields: why`. */
interface Told {
  readonly fields: readonly string[];
  readonly why: string;
  readonly message?: string;
}

/**
 * INVALID_ARGUMENT telling `why`, naming `fields` in the message (`a or b: why`) and in a
 * google.rpc.BadRequest detail, as services' InvalidArgumentError does; with no field, `why` alone.
 */
export function invalidFields(fields: readonly string[], why: string, told?: string): ConnectError {
  const named = fields.map((f) => clipText(f.toWellFormed(), MAX_FIELD));
  const said = told ?? (named.length > 0 ? `${named.join(" or ")}: ${why}` : why);
  const message = clipText(said.toWellFormed(), MAX_MESSAGE);
  if (named.length === 0) return new ConnectError(message, Code.InvalidArgument);
  const description = clipText(why.toWellFormed(), MAX_MESSAGE);
  const fieldViolations = named.map((field) => ({ field, description }));
  return new ConnectError(message, Code.InvalidArgument, undefined, [
    { desc: BadRequestSchema, value: { fieldViolations } },
  ]);
}

/** protobuf-es's error `protobufMessage` decoding `input` as INVALID_ARGUMENT naming the field (see above). */
export function jsonError(input: DescMessage, protobufMessage: string): ConnectError {
  // A client's lone surrogate (`"\ud800"`) quoted raw became a `\ud800` escape in the JSON error, which
  // names no character (RFC 8259 §8.2; serde_json refuses the whole body): quoted as U+FFFD, as UTF-8 has it.
  const message = protobufMessage.toWellFormed();
  const told = described(input, message);
  if (told) return invalidFields(told.fields, told.why, told.message);
  // Anything else protobuf-es says of the message as a whole (`[]`, too deep): told by its type.
  const whole = message.replace(/^cannot decode (field|message|oneof) [\w.]*?\.?(\w+) from JSON: /, "$2: ");
  return new ConnectError(clipText(whole, MAX_MESSAGE), Code.InvalidArgument);
}

/** JSON.parse's errors (V8's words): the body is no JSON at all. */
const NOT_JSON = /in JSON at position \d+|is not valid JSON|Unexpected end of JSON input/;

/** What a body that is not JSON is told: there is no field to name. */
export const notJson = (why?: string) =>
  `the request body is not valid JSON${why ? ` (${why})` : ""}; no field can be named`;

function described(input: DescMessage, message: string): Told | undefined {
  const notObject =
    /^cannot decode message ([\w.]+) from JSON: (?!key "|maximum recursion|duplicate object key)(.*)$/s.exec(message);
  // Before the holders: a message that holds its own type would name one for a body that is no JSON.
  if (notObject && notObject[1] === input.typeName && NOT_JSON.test(notObject[2] ?? "")) {
    return { fields: [], why: notJson(notObject[2]) };
  }
  const holders = notObject ? fieldsOfType(input, notObject[1] ?? "") : [];
  const holder = holders[0]?.field;
  if (notObject && holder?.message) {
    const fields = holders.map((h) => h.path);
    // "each element" only when every field named holds a list (or each a map) of them.
    const kinds = new Set(holders.map((h) => h.field.fieldKind));
    const each =
      kinds.size > 1 ? "" : ({ list: "each element ", map: "each value " }[holder.fieldKind as "list"] ?? "");
    return holder.message.typeName.startsWith("google.protobuf.")
      ? { fields, why: `${each}not a valid ${holder.message.typeName} (${notObject[2]})` }
      : { fields, why: `${each}must be a ${holder.message.name} object, got ${notObject[2]}` };
  }
  // `cannot decode enum shopmesh.common.v1.SagaMode from JSON: "NOPE"`: named by its field too.
  const badEnum = /^cannot decode enum ([\w.]+) from JSON: (.*)$/s.exec(message);
  const enumHolders = badEnum ? fieldsOfType(input, badEnum[1] ?? "") : [];
  const enumType = enumHolders[0]?.field.enum;
  if (badEnum && enumType) {
    return { fields: enumHolders.map((h) => h.path), why: `${badEnum[2]} is not a ${enumType.name} value` };
  }
  // An unknown key inside a nested message (`cannot decode message shopmesh.order.v1.LineItem from JSON:
  // key "unit" is unknown`): named by the fields that hold that message, `items: key "unit" is unknown`.
  // One at the top is told by its type, as before, and named in the detail as the client wrote it.
  const unknownKey = /^cannot decode message ([\w.]+) from JSON: key "(.*)" is unknown$/s.exec(message);
  if (unknownKey) {
    const why = `key "${unknownKey[2]}" is unknown`;
    const keyHolders = unknownKey[1] !== input.typeName ? fieldsOfType(input, unknownKey[1] ?? "") : [];
    if (keyHolders.length > 0) return { fields: keyHolders.map((h) => h.path), why };
    return { fields: [unknownKey[2] ?? ""], why, message: `${input.name}: ${why}` };
  }
  // protobuf-es's scan for a key given twice names the key alone, not where it is: named as written.
  const twice = /^cannot decode message [\w.]+ from JSON: duplicate object key "(.*)"$/s.exec(message);
  if (twice) {
    const why = `the request body has the object key "${twice[1]}" twice`;
    return { fields: [twice[1] ?? ""], why, message: why };
  }
  // A field (or oneof) of a nested message is named by its path: `items.quantity`.
  const field = /^cannot decode (?:field|oneof) ([\w.]+)\.(\w+) from JSON: (.*)$/s.exec(message);
  if (field) {
    const [, typeName = "", name = "", why = ""] = field;
    const paths = typeName === input.typeName ? [] : fieldsOfType(input, typeName).map((h) => `${h.path}.${name}`);
    return { fields: paths.length > 0 ? paths : [name], why };
  }
  return undefined;
}
