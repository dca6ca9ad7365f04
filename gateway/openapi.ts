/**
 * `GET /openapi.json`: the OpenAPI 3.1 document of the REST routes, as
 * `buf generate` wrote it from the contracts (scripts/protoc-gen-openapi.ts)
 * into gen/openapi/. No token needed: like reflection, it describes only the
 * public contract. The document is read once at start and answered from
 * memory, gzipped for clients that take it, with an ETag for revalidation.
 */
import { createHash } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { gzipSync } from "node:zlib";
import type { Logger } from "../platform/log.js";
import { type Endpoint, pathOf, type Req } from "./endpoint.js";

/** Where the gateway answers with the document. */
export const OPENAPI_PATH = "/openapi.json";
/** Where `buf generate` writes it, from the repository root. */
const DOCUMENT = join("gen", "openapi", "shopmesh.openapi.json");

/**
 * The generated document, looked for in the folders above `from`: beside
 * the sources (gateway/ -> gen/) and above a build in dist/ (make build
 * compiles TypeScript only). Undefined when this build has none.
 */
export function findOpenApiDocument(from: string = import.meta.dirname): Uint8Array | undefined {
  for (let dir = dirname(from); ; dir = dirname(dir)) {
    const file = join(dir, DOCUMENT);
    if (existsSync(file)) return readFileSync(file);
    if (dirname(dir) === dir) return undefined;
  }
}

/** Whether an Accept-Encoding header takes gzip (named or `*`, with a q-value above 0). */
function takesGzip(accept: string | undefined): boolean {
  return (accept ?? "").split(",").some((part) => {
    const [name = "", ...params] = part.split(";").map((s) => s.trim().toLowerCase());
    const q = params.find((p) => p.startsWith("q="));
    return (name === "gzip" || name === "*") && (q === undefined || Number(q.slice(2)) > 0);
  });
}

/**
 * Owns {@link OPENAPI_PATH} and answers it with `document` (404, and a
 * warning at start, without one).
 */
export function openApiEndpoint(document: Uint8Array | undefined, log: Logger): Endpoint {
  if (!document) log.warn({ path: OPENAPI_PATH, document: DOCUMENT }, "no OpenAPI document in this build");
  const gzipped = document && gzipSync(document, { level: 9 });
  const etag = document && `"${createHash("sha256").update(document).digest("base64url").slice(0, 27)}"`;
  const owns = (req: Req) => pathOf(req) === OPENAPI_PATH;
  return {
    name: "openapi",
    owns,
    serve: (req, res) => {
      if (req.method !== "GET" && req.method !== "HEAD") {
        res.writeHead(405, { allow: "GET, HEAD", "content-length": "0" });
        res.end();
        return;
      }
      if (!document || !gzipped || !etag) {
        const body = JSON.stringify({ code: 5, message: `this build has no ${DOCUMENT}`, details: [] });
        res.writeHead(404, { "content-type": "application/json", "content-length": String(Buffer.byteLength(body)) });
        res.end(body);
        return;
      }
      // Revalidated on every use after five minutes: a new deploy may bring a new document.
      const vary = [res.getHeader("vary"), "Accept-Encoding"].filter(Boolean).join(", "); // after CORS' Origin
      const headers: Record<string, string> = { etag, "cache-control": "public, max-age=300", vary };
      const known = (req.headers["if-none-match"] ?? "").split(",").map((t) => t.trim().replace(/^W\//, ""));
      if (known.includes(etag) || known.includes("*")) {
        res.writeHead(304, headers);
        res.end();
        return;
      }
      const gzip = takesGzip(req.headers["accept-encoding"]);
      const body = gzip ? gzipped : document;
      res.writeHead(200, {
        ...headers,
        "content-type": "application/json",
        ...(gzip ? { "content-encoding": "gzip" } : {}),
        "content-length": String(body.byteLength),
      });
      if (req.method === "HEAD") res.end();
      else res.end(body);
    },
  };
}
