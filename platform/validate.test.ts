/** Field validators name the field as the proto does. */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { StructSchema, ValueSchema } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { violatedField as field } from "../test/rpc.js";
import { requireId, requireQuantity, requireText, stringWithNul } from "./validate.js";

describe("requireId", () => {
  it("accepts 1..max of [A-Za-z0-9._:-] not starting with punctuation", () => {
    expect(requireId("ord_1:a.b-c", "order_id")).toBe("ord_1:a.b-c");
    for (const bad of ["", ".x", "a b", "é", "x".repeat(129)])
      expect(field(() => requireId(bad, "order_id"))).toBe("order_id");
    expect(field(() => requireId("x".repeat(65), "card_token", 64))).toBe("card_token");
  });
});

describe("requireQuantity", () => {
  it("accepts integers in range only", () => {
    expect(requireQuantity(3, "quantity")).toBe(3);
    for (const bad of [0, -1, 1.5, 1_000_001, Number.NaN])
      expect(field(() => requireQuantity(bad, "quantity"))).toBe("quantity");
    expect(field(() => requireQuantity(11, "quantity", 1, 10))).toBe("quantity");
  });
});

describe("requireText", () => {
  it("takes any text up to max, emoji and other scripts included, and refuses control characters", () => {
    for (const ok of [
      "",
      "changed my mind",
      "너무 늦게 도착해요 \u{1F4E6}",
      "family \u{1F468}\u200d\u{1F467}",
      "non-joiner \u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645",
      "England \u{1F3F4}\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}",
      "Wales \u{1F3F4}\u{E0067}\u{E0062}\u{E0077}\u{E006C}\u{E0073}\u{E007F} and a black flag \u{1F3F4}",
      "thanks \u2764\ufe0f, keycap 1\ufe0f\u20e3, text style \u263a\ufe0e",
      "decomposed Vie\u0302\u0323t, pointed Hebrew \u05e9\u05c1\u05b8\u05dc\u05d5\u05b9\u05dd",
      `eight marks a${"\u0301".repeat(8)}`,
      "주문을 취소합니다, 注文をキャンセルします, أريد إلغاء الطلب, मैं ऑर्डर रद्द करना चाहता हूँ, ต้องการยกเลิกคำสั่งซื้อ",
      "\u{1F468}\u200d\u{1F469}\u200d\u{1F467} \u2764\ufe0f\u200d\u{1F525} \u{1F441}\ufe0f\u200d\u{1F5E8}\ufe0f \u{1F1F0}\u{1F1F7}",
      // A Japanese name's exact form, Mongolian, braille's word space, a standardized variation sequence.
      "\u845b\u{E0100}\u57ce\u3055\u3093",
      "\u182d\u180b\u1820\u1828",
      "\u2813\u2811\u2807\u2807\u2815\u2800\u283a\u2815\u2817\u2807\u2819",
      "price \u2269\ufe00 expected",
      "x".repeat(500),
    ])
      expect(requireText(ok, "reason", 500)).toBe(ok);
    for (const bad of [
      "x".repeat(501),
      "\u001b[31mred",
      "two\nlines",
      "tab\there",
      "cr\r",
      "del\u007f",
      "c1\u009b",
      "ls\u2028",
      "rlo\u202e",
      "isolate\u2066",
      "rlm\u200f",
      "lrm\u200e",
      "alm\u061c",
      "embedding\u202b",
      "zwsp\u200b",
      "joiner\u2060",
      "bom\ufeff",
      "soft hyphen pay\u00adpal",
      "hidden tags\u{E0070}\u{E0061}\u{E0079}",
      "tags without their flag\u{E0067}\u{E007F}",
      "hangul filler a\u3164b",
      "cgj a\u034fb",
      "annotation \ufff9a\ufffab\ufffb",
      // Tag text behind a black flag that spells no flag: hidden ASCII.
      `flag \u{1F3F4}${[..."ignore"].map((c) => String.fromCodePoint(0xe0000 + c.charCodeAt(0))).join("")}\u{E007F}`,
      "flag \u{1F3F4}\u{E0067}\u{E0062}\u{E0078}\u{E0078}\u{E0078}\u{E007F}",
      // Variation selectors carrying a byte each, or more than the one an emoji takes.
      `emoji \u{1F600}${[..."wire"].map((c) => String.fromCodePoint(0xe0100 + c.charCodeAt(0))).join("")}`,
      "two selectors \u{1F600}\ufe0f\ufe0f",
      "\ufe0fselector first",
      "two standardized \u2269\ufe00\ufe00",
      "ideographic selector after a latin a\u{E0100}",
      "two ideographic selectors \u845b\u{E0100}\u{E0101}",
      "mongolian selector after a latin a\u180b",
      // ASCII in the unassigned ignorable block after the tags; bits in a run of joiners; a joiner first.
      `hidden ${[..."ignore"].map((c) => String.fromCodePoint(0xe0080 + c.charCodeAt(0))).join("")}`,
      `bits a${"\u200c\u200d\u200d\u200c"}`,
      "\u200dfirst",
      "unassigned ignorable \u2065 \ufff0",
      "khmer a\u17b4b",
      "braille blank a\u2800b",
      `nine marks a${"\u0489".repeat(9)}`,
    ])
      expect(
        field(() => requireText(bad, "reason", 500)),
        JSON.stringify(bad),
      ).toBe("reason");
  });
});

describe("stringWithNul", () => {
  const value = (v: MessageInitShape<typeof ValueSchema>["kind"]) => create(ValueSchema, { kind: v });
  const struct = (fields: Record<string, ReturnType<typeof value>>) => create(StructSchema, { fields });
  it("finds a NUL in any string of a message, by the path of its fields' .proto names", () => {
    const ok = struct({ a: value({ case: "stringValue", value: "fine" }) });
    expect(stringWithNul(StructSchema, ok)).toBeUndefined();
    // A map's value, through a oneof.
    expect(stringWithNul(StructSchema, struct({ a: value({ case: "stringValue", value: "x\0" }) }))).toBe(
      'fields["a"].string_value',
    );
    // A map's key.
    expect(stringWithNul(StructSchema, struct({ "a\0": value({ case: "numberValue", value: 1 }) }))).toBe("fields");
    // A list, nested in a message in a oneof.
    const list = value({
      case: "listValue",
      value: { values: [value({ case: "boolValue", value: true }), value({ case: "stringValue", value: "\0" })] },
    });
    expect(stringWithNul(StructSchema, struct({ l: list }))).toBe('fields["l"].list_value.values[1].string_value');
    // The case of a oneof not chosen is not read.
    expect(stringWithNul(ValueSchema, value({ case: "numberValue", value: 0 }))).toBeUndefined();
  });
});
