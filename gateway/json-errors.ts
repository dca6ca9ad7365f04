/**
 * protobuf-es's JSON errors, told in the client's terms: the field, not the Go-style type path —
 * `cannot decode field shopmesh.order.v1.PlaceOrderRequest.card_token from JSON: 5` becomes
 * `card_token: 5`, and an element of a list of messages that is not an object, which protobuf-es
 * names by its type alone (`cannot decode message shopmesh.order.v1.LineItem from JSON: 1`), is
 * named by the field that holds it: `items: each element must be a LineItem object, got 1`; so is
 * an enum value that is not one (`saga_mode: "NOPE" is not a SagaMode value`).
 */
import type { DescField, DescMessage } from "@bufbuild/protobuf";
import { clipText } from "../platform/index.js";

/** The dotted proto name of the first field under `input` (breadth first) holding `typeName` (a message or an enum). */
function fieldOfType(input: DescMessage, typeName: string): { path: string; field: DescField } | undefined {
  const queue: { message: DescMessage; prefix: string }[] = [{ message: input, prefix: "" }];
  const seen = new Set<string>();
  for (let next = queue.shift(); next; next = queue.shift()) {
    if (seen.has(next.message.typeName)) continue;
    seen.add(next.message.typeName);
    for (const field of next.message.fields) {
      const path = `${next.prefix}${field.name}`;
      if ((field.message ?? field.enum)?.typeName === typeName) return { path, field };
      if (field.message) queue.push({ message: field.message, prefix: `${path}.` });
    }
  }
  return undefined;
}

/** Longest message told: an unknown key is quoted in it, and a client may send a 900 KB one. */
const MAX_MESSAGE = 1_000;

/** What was wrong with a request's JSON, naming the field (see above). */
export function describeJsonError(input: DescMessage, message: string): string {
  return clipText(described(input, message), MAX_MESSAGE);
}

function described(input: DescMessage, message: string): string {
  const notObject = /^cannot decode message ([\w.]+) from JSON: (?!key "|maximum recursion)(.*)$/s.exec(message);
  const holder = notObject && fieldOfType(input, notObject[1] ?? "");
  if (notObject && holder?.field.message) {
    const each = { message: "", list: "each element ", map: "each value " }[holder.field.fieldKind as "message"] ?? "";
    return `${holder.path}: ${each}must be a ${holder.field.message.name} object, got ${notObject[2]}`;
  }
  // `cannot decode enum shopmesh.common.v1.SagaMode from JSON: "NOPE"`: named by its field too.
  const badEnum = /^cannot decode enum ([\w.]+) from JSON: (.*)$/s.exec(message);
  const enumHolder = badEnum && fieldOfType(input, badEnum[1] ?? "");
  if (badEnum && enumHolder?.field.enum) {
    return `${enumHolder.path}: ${badEnum[2]} is not a ${enumHolder.field.enum.name} value`;
  }
  return message.replace(/^cannot decode (field|message) [\w.]*?\.?(\w+) from JSON: /, "$2: ");
}
