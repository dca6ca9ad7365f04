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
import { ServerReflection, type ServerReflectionResponseSchema } from "../gen/grpc/reflection/v1/reflection_pb.js";

type Answer = MessageInitShape<typeof ServerReflectionResponseSchema>["messageResponse"];

/**
 * The reflection service over `services` (their files and imports). For a
 * service listed in `exposed`, only those methods are described: internal
 * RPCs are neither reachable nor advertised.
 */
export function createReflection(
  services: readonly DescService[],
  exposed: ReadonlyMap<string, readonly string[]> = new Map(),
): ServiceImpl<typeof ServerReflection> {
  const files = new Map<string, DescFile>();
  const visit = (f: DescFile) => {
    if (files.has(f.name)) return;
    files.set(f.name, f);
    for (const d of f.dependencies) visit(d);
  };
  for (const s of [...services, ServerReflection]) visit(s.file);

  // Symbol -> file, for every service, method, message and enum the files declare.
  const symbols = new Map<string, DescFile>();
  for (const f of files.values()) {
    for (const s of f.services) {
      symbols.set(s.typeName, f);
      for (const m of s.methods) symbols.set(`${s.typeName}.${m.name}`, f);
    }
    for (const m of f.messages) symbols.set(m.typeName, f);
    for (const e of f.enums) symbols.set(e.typeName, f);
  }
  const encode = (f: DescFile) => {
    const proto = clone(FileDescriptorProtoSchema, f.proto);
    for (const s of proto.service) {
      const only = exposed.get(`${proto.package}.${s.name}`);
      if (only) s.method = s.method.filter((m) => only.includes(m.name));
    }
    return toBinary(FileDescriptorProtoSchema, proto);
  };
  const encoded = new Map([...files.values()].map((f) => [f.name, encode(f)]));
  const withImports = (f: DescFile): Uint8Array[] => {
    const out = new Map<string, Uint8Array>();
    const walk = (x: DescFile) => {
      if (out.has(x.name)) return;
      out.set(x.name, encoded.get(x.name) as Uint8Array);
      for (const d of x.dependencies) walk(d);
    };
    walk(f);
    return [...out.values()];
  };
  const notFound = (what: string): Answer => ({
    case: "errorResponse",
    value: { errorCode: 5, errorMessage: `${what} not found` },
  });
  const listed = [...services, ServerReflection].map((s) => ({ name: s.typeName }));

  return {
    async *serverReflectionInfo(requests) {
      for await (const req of requests) {
        const q = req.messageRequest;
        let answer: Answer;
        switch (q.case) {
          case "listServices":
            answer = { case: "listServicesResponse", value: { service: listed } };
            break;
          case "fileByFilename": {
            const f = files.get(q.value);
            answer = f
              ? { case: "fileDescriptorResponse", value: { fileDescriptorProto: withImports(f) } }
              : notFound(`file ${q.value}`);
            break;
          }
          case "fileContainingSymbol": {
            const f = symbols.get(q.value);
            answer = f
              ? { case: "fileDescriptorResponse", value: { fileDescriptorProto: withImports(f) } }
              : notFound(`symbol ${q.value}`);
            break;
          }
          case "allExtensionNumbersOfType":
            answer = { case: "allExtensionNumbersResponse", value: { baseTypeName: q.value, extensionNumber: [] } };
            break;
          default:
            answer = notFound("extension");
        }
        yield { validHost: req.host, originalRequest: req, messageResponse: answer };
      }
    },
  };
}
