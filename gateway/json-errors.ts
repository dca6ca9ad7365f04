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
 * the type the error names, all are named (`at or times`): protobuf-es does not say which.
 */
import type { DescField, DescMessage } from "@bufbuild/protobuf";
import { clipText } from "../platform/index.js";

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

/** Longest message told: an unknown key is quoted in it, and a client may send a 900 KB one. */
const MAX_MESSAGE = 1_000;

/** What was wrong with a request's JSON, naming the field (see above). */
export function describeJsonError(input: DescMessage, message: string): string {
  return clipText(described(input, message), MAX_MESSAGE);
}

function described(input: DescMessage, message: string): string {
  const notObject = /^cannot decode message ([\w.]+) from JSON: (?!key "|maximum recursion)(.*)$/s.exec(message);
  const holders = notObject ? fieldsOfType(input, notObject[1] ?? "") : [];
  const holder = holders[0]?.field;
  if (notObject && holder?.message) {
    const where = holders.map((h) => h.path).join(" or ");
    // "each element" only when every field named holds a list (or each a map) of them.
    const kinds = new Set(holders.map((h) => h.field.fieldKind));
    const each =
      kinds.size > 1 ? "" : ({ list: "each element ", map: "each value " }[holder.fieldKind as "list"] ?? "");
    return holder.message.typeName.startsWith("google.protobuf.")
      ? `${where}: ${each}not a valid ${holder.message.typeName} (${notObject[2]})`
      : `${where}: ${each}must be a ${holder.message.name} object, got ${notObject[2]}`;
  }
  // `cannot decode enum shopmesh.common.v1.SagaMode from JSON: "NOPE"`: named by its field too.
  const badEnum = /^cannot decode enum ([\w.]+) from JSON: (.*)$/s.exec(message);
  const enumHolders = badEnum ? fieldsOfType(input, badEnum[1] ?? "") : [];
  const enumType = enumHolders[0]?.field.enum;
  if (badEnum && enumType) {
    return `${enumHolders.map((h) => h.path).join(" or ")}: ${badEnum[2]} is not a ${enumType.name} value`;
  }
  // An unknown key inside a nested message (`cannot decode message shopmesh.order.v1.LineItem from JSON:
  // key "unit" is unknown`): named by the fields that hold that message, `items: key "unit" is unknown`.
  const unknownKey = /^cannot decode message ([\w.]+) from JSON: (key ".*" is unknown)$/s.exec(message);
  const keyHolders = unknownKey && unknownKey[1] !== input.typeName ? fieldsOfType(input, unknownKey[1] ?? "") : [];
  if (unknownKey && keyHolders.length > 0) return `${keyHolders.map((h) => h.path).join(" or ")}: ${unknownKey[2]}`;
  return message.replace(/^cannot decode (field|message|oneof) [\w.]*?\.?(\w+) from JSON: /, "$2: ");
}
