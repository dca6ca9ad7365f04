/**
 * What the gateway serves to a browser besides RPCs: the web shop's built
 * files (web/, built into dist/web by `make build`) and, while the
 * development signing key is in use, a sign-in that hands out development
 * tokens for the shop's three users.
 *
 * The files are read once at start and answered from memory, by exact path
 * only (`/` is index.html): nothing a client sends becomes a file name.
 * index.html is revalidated on every load; everything under assets/ carries
 * a content hash in its name and is cached for a year. The page runs under
 * a strict Content-Security-Policy (its own scripts and styles only, calls
 * to its own origin only).
 */
import { createHash } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, extname, join, relative, sep } from "node:path";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Role } from "../platform/identity-rule.js";
import type { Logger } from "../platform/log.js";
import { dropUnreadBody } from "./answer-end.js";
import { type AuthConfig, signDevToken } from "./auth.js";
import { readBody } from "./body.js";
import { DEV_JWT_SECRET } from "./config.js";
import { type Endpoint, NO_ENDPOINT, pathOf, type Res } from "./endpoint.js";
import { echoed } from "./wire.js";

const TYPES: Record<string, string> = {
  ".html": "text/html; charset=utf-8",
  ".js": "text/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".json": "application/json",
  ".svg": "image/svg+xml",
  ".png": "image/png",
  ".ico": "image/x-icon",
  ".woff2": "font/woff2",
  ".txt": "text/plain; charset=utf-8",
};

const SECURITY_HEADERS = {
  "content-security-policy":
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; " +
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
  "x-content-type-options": "nosniff",
  "referrer-policy": "no-referrer",
};

interface StaticFile {
  readonly body: Buffer;
  readonly headers: Record<string, string>;
}

/**
 * The built web directory: `dist/web` under a folder above `from` (the repository, from the
 * sources or dist/), or `web` beside the compiled gateway (the image). A built directory has a
 * manifest.json; the sources in web/ do not.
 */
export function findWebDirectory(from: string = import.meta.dirname): string | undefined {
  for (let dir = dirname(from); ; dir = dirname(dir)) {
    for (const candidate of [join(dir, "dist", "web"), join(dir, "web")]) {
      if (existsSync(join(candidate, "manifest.json"))) return candidate;
    }
    if (dirname(dir) === dir) return undefined;
  }
}

/** Every file under `root`, by URL path. */
function readTree(root: string): Map<string, StaticFile> {
  const files = new Map<string, StaticFile>();
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const path = join(dir, name);
      if (statSync(path).isDirectory()) {
        walk(path);
        continue;
      }
      const url = `/${relative(root, path).split(sep).join("/")}`;
      const body = readFileSync(path);
      const hashed = url.startsWith("/assets/");
      files.set(url, {
        body,
        headers: {
          "content-type": TYPES[extname(name)] ?? "application/octet-stream",
          "cache-control": hashed ? "public, max-age=31536000, immutable" : "no-cache",
          etag: `"${createHash("sha256").update(body).digest("base64url").slice(0, 22)}"`,
          ...SECURITY_HEADERS,
        },
      });
    }
  };
  walk(root);
  const index = files.get("/index.html");
  if (index) files.set("/", index);
  return files;
}

/** Owns GET/HEAD of the web page's files; anything else (an RPC, an unknown path) goes on to dispatch. */
export function webEndpoint(directory: string | undefined, log: Logger): Endpoint {
  if (!directory) {
    log.info("no built web page (make build writes dist/web): the gateway serves RPCs only");
    return NO_ENDPOINT;
  }
  const files = readTree(directory);
  log.info({ directory, files: files.size }, "serving the web page");
  return {
    name: "web",
    owns: (req) => (req.method === "GET" || req.method === "HEAD") && files.has(pathOf(req)),
    serve: (req, res) => {
      const file = files.get(pathOf(req)) as StaticFile; // owned: it exists
      if (req.headers["if-none-match"] === file.headers.etag) {
        res.writeHead(304, { etag: file.headers.etag ?? "", "cache-control": file.headers["cache-control"] ?? "" });
        res.end();
        return;
      }
      res.writeHead(200, { ...file.headers, "content-length": String(file.body.byteLength) });
      if (req.method === "HEAD") res.end();
      else res.end(file.body);
    },
  };
}

/** The shop's development users and their roles. */
export const DEV_USERS: Readonly<Record<string, readonly Role[]>> = {
  alice: ["customer"],
  bob: ["customer"],
  operator: ["admin"],
};
export const DEV_TOKEN_PATH = "/dev/token";
const DEV_TOKEN_TTL_S = 3600;
/** The largest sign-in body: `{"user": "..."}` needs a few dozen bytes. */
const MAX_SIGN_IN_BYTES = 1024;

/** Whether tokens are verified with the public development key (so handing them out gives nothing away). */
export function usesDevKey(c: AuthConfig): boolean {
  return c.JWT_SECRET === DEV_JWT_SECRET && c.JWT_PUBLIC_KEY === "" && c.JWT_JWKS_URL === "";
}

/**
 * `POST /dev/token {"user": "alice"}` → `{"token", "subject", "roles", "expiresInSeconds"}`, while
 * the development key is in use; otherwise the path does not exist (it goes on to dispatch, an unknown path).
 */
export function devSignInEndpoint(c: AuthConfig, log: Logger): Endpoint {
  if (!usesDevKey(c)) return NO_ENDPOINT;
  log.warn(
    { path: DEV_TOKEN_PATH },
    "development sign-in is on: anyone can get a token (the development key is public)",
  );
  const answer = (res: Res, status: number, body: unknown) => {
    const text = JSON.stringify(body);
    res.writeHead(status, {
      "content-type": "application/json",
      "cache-control": "no-store",
      "content-length": String(Buffer.byteLength(text)),
    });
    res.end(text);
  };
  const signIn = (res: Res, body: Buffer) => {
    let user: unknown;
    try {
      user = (JSON.parse(body.toString("utf8") || "{}") as { user?: unknown }).user;
    } catch {
      return answer(res, 400, { code: 3, message: "the request body is not valid JSON" });
    }
    const roles = typeof user === "string" && Object.hasOwn(DEV_USERS, user) ? DEV_USERS[user] : undefined;
    if (typeof user !== "string" || !roles) {
      return answer(res, 400, { code: 3, message: `user: must be one of ${Object.keys(DEV_USERS).join(", ")}` });
    }
    void signDevToken(c, user, roles, DEV_TOKEN_TTL_S).then(
      (token) => answer(res, 200, { token, subject: user, roles, expiresInSeconds: DEV_TOKEN_TTL_S }),
      () => answer(res, 500, { code: 13, message: "could not sign a token" }),
    );
  };
  return {
    name: "dev-token",
    owns: (req) => pathOf(req) === DEV_TOKEN_PATH,
    serve: (req, res) => {
      if (req.method !== "POST") {
        res.setHeader("allow", "POST");
        answer(res, 405, { code: 12, message: `${echoed(req.method ?? "")} is not allowed on ${DEV_TOKEN_PATH}` });
        return;
      }
      // Refused as soon as it is known to be too big, by its declared length or by what has arrived.
      const tooBig = () => {
        dropUnreadBody(req, res);
        answer(res, 413, { code: 8, message: `the request body is over ${MAX_SIGN_IN_BYTES} bytes` });
      };
      if (Number(req.headers["content-length"] ?? 0) > MAX_SIGN_IN_BYTES) return tooBig();
      readBody(req, MAX_SIGN_IN_BYTES, new AbortController().signal).then(
        (body) => signIn(res, body),
        // Past the limit; otherwise the body broke off and there is no one to answer.
        (err: unknown) => (ConnectError.from(err).code === Code.ResourceExhausted ? tooBig() : undefined),
      );
    },
  };
}
