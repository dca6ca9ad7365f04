/**
 * protobuf-es's JSON errors told by field (json-errors.ts), on a message made
 * for it: a type held by several fields, one of them through a type that two
 * fields share, and a list of it.
 */
import { create, createFileRegistry, fromJson, fromJsonString } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, file_google_protobuf_timestamp } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { expect, it } from "vitest";
import { BadRequestSchema } from "../gen/google/rpc/error_details_pb.js";
import { jsonError } from "./json-errors.js";

// message A { google.protobuf.Timestamp t = 1; }
// message R { A a = 1; A b = 2; repeated google.protobuf.Timestamp ts = 3; R next = 4; }
const file = create(FileDescriptorProtoSchema, {
  name: "probe.proto",
  package: "probe",
  syntax: "proto3",
  dependency: ["google/protobuf/timestamp.proto"],
  messageType: [
    {
      name: "A",
      field: [{ name: "t", jsonName: "t", number: 1, type: 11, label: 1, typeName: ".google.protobuf.Timestamp" }],
    },
    {
      name: "R",
      field: [
        { name: "a", jsonName: "a", number: 1, type: 11, label: 1, typeName: ".probe.A" },
        { name: "b", jsonName: "b", number: 2, type: 11, label: 1, typeName: ".probe.A" },
        { name: "ts", jsonName: "ts", number: 3, type: 11, label: 3, typeName: ".google.protobuf.Timestamp" },
        { name: "next", jsonName: "next", number: 4, type: 11, label: 1, typeName: ".probe.R" },
      ],
    },
  ],
});
const R = createFileRegistry(file, (name) =>
  name === file_google_protobuf_timestamp.proto.name ? file_google_protobuf_timestamp : undefined,
).getMessage("probe.R");

const told = (json: unknown) => {
  if (!R) throw new Error("no probe.R");
  try {
    fromJson(R, json as never);
    return "accepted";
  } catch (err) {
    return jsonError(R, (err as Error).message).rawMessage;
  }
};

it("names every field that holds the type, through a type two fields share (not into a type within itself), and says 'each' only when all are lists", () => {
  expect(told({ b: { t: "nope" } })).toBe(
    "ts or a.t or b.t: not a valid google.protobuf.Timestamp (invalid RFC 3339 string)",
  );
  expect(told({ ts: ["nope"] })).toBe(
    "ts or a.t or b.t: not a valid google.protobuf.Timestamp (invalid RFC 3339 string)",
  );
  expect(told({ ts: ["2026-01-01T00:00:00Z"], b: { t: "2026-01-01T00:00:00Z" } })).toBe("accepted");
});

it("names an unknown key inside a nested message by the fields that hold it; one at the top by its type, as before", () => {
  expect(told({ a: { t: "2026-01-01T00:00:00Z", u: 1 } })).toBe('a or b: key "u" is unknown');
  expect(told({ next: { zz: 1 } })).toBe('R: key "zz" is unknown');
  expect(told({ zz: 1 })).toBe('R: key "zz" is unknown');
});

/** The fields a refusal names in its google.rpc.BadRequest detail, and its message. */
const named = (text: string) => {
  if (!R) throw new Error("no probe.R");
  try {
    fromJsonString(R, text);
    return "accepted";
  } catch (err) {
    const e = jsonError(R, (err as Error).message);
    expect(e.code).toBe(Code.InvalidArgument);
    const fields = e.findDetails(BadRequestSchema).flatMap((d) => d.fieldViolations.map((v) => v.field));
    return { fields, message: e.rawMessage };
  }
};

it("names in a BadRequest detail the fields the message names; a body that is no JSON names none, and says so", () => {
  expect(named('{"b":{"t":"nope"}}')).toMatchObject({ fields: ["ts", "a.t", "b.t"] });
  expect(named('{"a":{"u":1}}')).toEqual({ fields: ["a", "b"], message: 'a or b: key "u" is unknown' });
  expect(named('{"zz":1}')).toEqual({ fields: ["zz"], message: 'R: key "zz" is unknown' });
  // A Timestamp that is no string is named by each field of its type, as one that is no time.
  expect(named('{"a":{"t":5}}')).toMatchObject({ fields: ["ts", "a.t", "b.t"] });
  expect(named('{"ts":[],"ts":[]}')).toEqual({
    fields: ["ts"],
    message: 'the request body has the object key "ts" twice',
  });
  expect(named("{bad")).toEqual({
    fields: [],
    message: expect.stringMatching(/^the request body is not valid JSON \(.*\); no field can be named$/),
  });
  expect(named("")).toMatchObject({ fields: [] });
});
