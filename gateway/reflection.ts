/**
 * gRPC server reflection (grpc.reflection.v1, and v1alpha for older grpcurl
 * releases and other tools that know only that) for the gateway's public
 * API, served over Connect, so `grpcurl -plaintext localhost:8080 list` and
 * `buf curl --list-methods` work without .proto files. It describes only
 * what the gateway routes — internal RPCs and services stay invisible, and
 * so do the messages only they use (a file that declares an internal
 * method or service shows only the types the public methods reach: the
 * chaos service's file, imported for its `Faults`, shows no service) — and
 * needs no token: it reveals nothing the public contract does not. Files
 * are found by their names as descriptors import them
 * (`shopmesh/payment/v1/payment.proto`). One stream answers at most
 * {@link MAX_QUERIES} queries, so a single request cannot be made to
 * produce an unbounded answer.
 */
import {
  clone,
  createFileRegistry,
  type DescExtension,
  type DescFile,
  type DescMessage,
  type DescService,
  type MessageInitShape,
  toBinary,
} from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type ConnectRouter, type ServiceImpl } from "@connectrpc/connect";
import {
  file_grpc_reflection_v1_reflection,
  ServerReflection,
  type ServerReflectionRequest,
  type ServerReflectionResponseSchema,
} from "../gen/grpc/reflection/v1/reflection_pb.js";
import { withImports } from "../platform/grpc.js";

type Answer = MessageInitShape<typeof ServerReflectionResponseSchema>["messageResponse"];

/** Queries one reflection stream answers; `grpcurl` or `buf curl` need a handful. */
export const MAX_QUERIES = 64;

/**
 * grpc.reflection.v1alpha.ServerReflection, the name grpcurl releases before
 * grpc.reflection.v1 existed still ask for (the services serve both, through
 * @grpc/reflection). Its .proto differs from v1's only in the package, so
 * it is v1's descriptor renamed rather than a second generated copy.
 */
export const ServerReflectionV1Alpha: DescService = (() => {
  const v1 = "grpc.reflection.v1";
  const alpha = "grpc.reflection.v1alpha";
  const proto = clone(FileDescriptorProtoSchema, file_grpc_reflection_v1_reflection.proto);
  const rename = (typeName: string) => typeName.replace(`.${v1}.`, `.${alpha}.`);
  proto.name = "grpc/reflection/v1alpha/reflection.proto";
  proto.package = alpha;
  proto.options = undefined; // v1's go/java package options name v1
  for (const m of proto.messageType) for (const f of m.field) f.typeName = rename(f.typeName);
  for (const s of proto.service) {
    for (const m of s.method) {
      m.inputType = rename(m.inputType);
      m.outputType = rename(m.outputType);
    }
  }
  const service = createFileRegistry(proto, () => undefined).getService(`${alpha}.ServerReflection`);
  if (!service) throw new Error(`${alpha}.ServerReflection missing from its renamed descriptor`);
  return service;
})();

/** Both reflection services the gateway serves; neither needs a token. */
export const REFLECTION_SERVICES: readonly DescService[] = [ServerReflection, ServerReflectionV1Alpha];

/** What the gateway shows: which methods of each service, and which types of the files that declare them. */
interface View {
  /** The services described (the rest of their files' services are not). */
  readonly services: ReadonlySet<string>;
  readonly exposed: ReadonlyMap<string, readonly string[]>;
  /** Messages and enums the public methods reach (in files with a restricted service, nothing else shows). */
  readonly reachable: ReadonlySet<string>;
}

/** Adds `m` and every message and enum its fields reach to `into`. */
function reach(m: DescMessage, into: Set<string>): void {
  if (into.has(m.typeName)) return;
  into.add(m.typeName);
  for (const f of m.fields) {
    if (f.message) reach(f.message, into);
    if (f.enum) into.add(f.enum.typeName);
  }
  for (const n of m.nestedMessages) reach(n, into);
  for (const e of m.nestedEnums) into.add(e.typeName);
}

/** The methods a client may call: all of a service, or those `exposed` lists. */
function publicMethods(s: DescService, exposed: View["exposed"]) {
  const only = exposed.get(s.typeName);
  return only ? s.methods.filter((m) => only.includes(m.name)) : s.methods;
}

/** Whether `f` declares a service that is not described, or some of whose methods are internal. */
const restricted = (f: DescFile, v: View) =>
  f.services.some((s) => !v.services.has(s.typeName) || v.exposed.has(s.typeName));
/** Whether type `name` of `f` shows. */
const showsType = (f: DescFile, name: string, v: View) => !restricted(f, v) || v.reachable.has(name);

/** Symbol -> file, for every public service, method, message and enum `files` declare. */
function symbolIndex(files: readonly DescFile[], v: View): Map<string, DescFile> {
  const symbols = new Map<string, DescFile>();
  for (const f of files) {
    for (const s of f.services) {
      if (!v.services.has(s.typeName)) continue;
      symbols.set(s.typeName, f);
      for (const m of publicMethods(s, v.exposed)) symbols.set(`${s.typeName}.${m.name}`, f);
    }
    for (const m of f.messages) if (showsType(f, m.typeName, v)) symbols.set(m.typeName, f);
    for (const e of f.enums) if (showsType(f, e.typeName, v)) symbols.set(e.typeName, f);
  }
  return symbols;
}

/** A file's descriptor as the gateway shows it: public methods, and the types they reach. */
function shown(f: DescFile, v: View): Uint8Array {
  const proto = clone(FileDescriptorProtoSchema, f.proto);
  const prefix = proto.package ? `${proto.package}.` : "";
  proto.service = proto.service.filter((s) => v.services.has(`${prefix}${s.name}`));
  for (const s of proto.service) {
    const only = v.exposed.get(`${prefix}${s.name}`);
    if (only) s.method = s.method.filter((m) => only.includes(m.name));
  }
  proto.messageType = proto.messageType.filter((m) => showsType(f, `${prefix}${m.name}`, v));
  proto.enumType = proto.enumType.filter((e) => showsType(f, `${prefix}${e.name}`, v));
  return toBinary(FileDescriptorProtoSchema, proto);
}

/**
 * The reflection service over `services` (their files and imports). For a
 * service listed in `exposed`, only those methods are described: internal
 * RPCs are neither reachable nor advertised.
 */
function createReflection(
  services: readonly DescService[],
  exposed: ReadonlyMap<string, readonly string[]> = new Map(),
): ServiceImpl<typeof ServerReflection> {
  const all = [...services, ...REFLECTION_SERVICES];
  const reachable = new Set<string>();
  for (const s of all) {
    for (const m of publicMethods(s, exposed)) {
      reach(m.input, reachable);
      reach(m.output, reachable);
    }
  }
  const view: View = { services: new Set(all.map((s) => s.typeName)), exposed, reachable };
  // By the name a descriptor's `dependency` gives it (protobuf-es's `name` drops the `.proto`).
  const files = new Map(withImports(all.map((s) => s.file)).map((f) => [f.proto.name, f]));
  const symbols = symbolIndex([...files.values()], view);
  const encoded = new Map([...files].map(([name, f]) => [name, shown(f, view)]));
  const descriptors = (f: DescFile): Answer => ({
    case: "fileDescriptorResponse",
    value: { fileDescriptorProto: withImports([f]).map((x) => encoded.get(x.proto.name) as Uint8Array) },
  });
  const notFound = (what: string): Answer => ({
    case: "errorResponse",
    value: { errorCode: 5, errorMessage: `${what} not found` },
  });
  const listed = all.map((s) => ({ name: s.typeName }));
  // The extensions the shown files declare (google.api.http on MethodOptions, ...), nested ones too.
  const nested = (m: DescMessage): DescExtension[] => [...m.nestedExtensions, ...m.nestedMessages.flatMap(nested)];
  const extensions = [...files.values()].flatMap((f) => [...f.extensions, ...f.messages.flatMap(nested)]);

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
      case "fileContainingExtension": {
        const { containingType, extensionNumber } = q.value;
        const f = extensions.find((x) => x.extendee.typeName === containingType && x.number === extensionNumber)?.file;
        return f ? descriptors(f) : notFound(`extension ${extensionNumber} of ${containingType}`);
      }
      case "allExtensionNumbersOfType": {
        if (!symbols.has(q.value)) return notFound(`type ${q.value}`);
        const numbers = extensions.filter((x) => x.extendee.typeName === q.value).map((x) => x.number);
        return { case: "allExtensionNumbersResponse", value: { baseTypeName: q.value, extensionNumber: numbers } };
      }
      default:
        // As grpc-go answers it: a request that asks nothing is the client's error, and ends the stream.
        throw new ConnectError("a reflection request must set one query (message_request)", Code.InvalidArgument);
    }
  };
  return {
    async *serverReflectionInfo(requests) {
      let answered = 0;
      for await (const req of requests) {
        if (++answered > MAX_QUERIES) {
          throw new ConnectError(
            `at most ${MAX_QUERIES} reflection queries per stream; open another`,
            Code.ResourceExhausted,
          );
        }
        yield { validHost: req.host, originalRequest: req, messageResponse: answer(req.messageRequest) };
      }
    },
  };
}

/**
 * Registers {@link createReflection} on `router` under both reflection
 * services: one implementation, since the two speak the same messages.
 */
export function registerReflection(
  router: ConnectRouter,
  services: readonly DescService[],
  exposed: ReadonlyMap<string, readonly string[]> = new Map(),
): void {
  const impl = createReflection(services, exposed);
  router.service(ServerReflection, impl);
  // The same handler under v1alpha's names: its messages are v1's, field for field.
  router.service(ServerReflectionV1Alpha, impl as ServiceImpl<DescService>);
}
