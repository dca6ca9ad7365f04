/**
 * gRPC server reflection (grpc.reflection.v1) for the gateway's public API,
 * served over Connect, so `grpcurl -plaintext localhost:8080 list` and
 * `buf curl --list-methods` work without .proto files. It describes only
 * what the gateway routes — internal RPCs stay invisible — and needs no
 * token: it reveals nothing the public contract does not.
 */
import { clone, type DescFile, type DescService, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type { ServiceImpl } from "@connectrpc/connect";
import {
  ServerReflection,
  type ServerReflectionRequest,
  type ServerReflectionResponseSchema,
} from "../gen/grpc/reflection/v1/reflection_pb.js";
import { withImports } from "../platform/index.js";

type Answer = MessageInitShape<typeof ServerReflectionResponseSchema>["messageResponse"];

/** Symbol -> file, for every service, method, message and enum `files` declare. */
function symbolIndex(files: readonly DescFile[]): Map<string, DescFile> {
  const symbols = new Map<string, DescFile>();
  for (const f of files) {
    for (const s of f.services) {
      symbols.set(s.typeName, f);
      for (const m of s.methods) symbols.set(`${s.typeName}.${m.name}`, f);
    }
    for (const m of f.messages) symbols.set(m.typeName, f);
    for (const e of f.enums) symbols.set(e.typeName, f);
  }
  return symbols;
}

/** A file's descriptor as the gateway shows it: services listed in `exposed` keep only those methods. */
function shown(f: DescFile, exposed: ReadonlyMap<string, readonly string[]>): Uint8Array {
  const proto = clone(FileDescriptorProtoSchema, f.proto);
  for (const s of proto.service) {
    const only = exposed.get(`${proto.package}.${s.name}`);
    if (only) s.method = s.method.filter((m) => only.includes(m.name));
  }
  return toBinary(FileDescriptorProtoSchema, proto);
}

/**
 * The reflection service over `services` (their files and imports). For a
 * service listed in `exposed`, only those methods are described: internal
 * RPCs are neither reachable nor advertised.
 */
export function createReflection(
  services: readonly DescService[],
  exposed: ReadonlyMap<string, readonly string[]> = new Map(),
): ServiceImpl<typeof ServerReflection> {
  const all = [...services, ServerReflection];
  const files = new Map(withImports(all.map((s) => s.file)).map((f) => [f.name, f]));
  const symbols = symbolIndex([...files.values()]);
  const encoded = new Map([...files.values()].map((f) => [f.name, shown(f, exposed)]));
  const descriptors = (f: DescFile): Answer => ({
    case: "fileDescriptorResponse",
    value: { fileDescriptorProto: withImports([f]).map((x) => encoded.get(x.name) as Uint8Array) },
  });
  const notFound = (what: string): Answer => ({
    case: "errorResponse",
    value: { errorCode: 5, errorMessage: `${what} not found` },
  });
  const listed = all.map((s) => ({ name: s.typeName }));

  const answer = (q: ServerReflectionRequest["messageRequest"]): Answer => {
    switch (q.case) {
      case "listServices":
        return { case: "listServicesResponse", value: { service: listed } };
      case "fileByFilename": {
        const f = files.get(q.value);
        return f ? descriptors(f) : notFound(`file ${q.value}`);
      }
      case "fileContainingSymbol": {
        const f = symbols.get(q.value);
        return f ? descriptors(f) : notFound(`symbol ${q.value}`);
      }
      case "allExtensionNumbersOfType":
        return { case: "allExtensionNumbersResponse", value: { baseTypeName: q.value, extensionNumber: [] } };
      default:
        return notFound("extension");
    }
  };
  return {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) {
        yield { validHost: req.host, originalRequest: req, messageResponse: answer(req.messageRequest) };
      }
    },
  };
}
