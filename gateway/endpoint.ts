/**
 * A plain HTTP endpoint of the gateway (the OpenAPI document, the web page, the development
 * sign-in): tried before the RPC pipeline, behind the same per-address limits (server.ts).
 */
import type http from "node:http";
import type http2 from "node:http2";

export type Req = http.IncomingMessage | http2.Http2ServerRequest;
export type Res = http.ServerResponse | http2.Http2ServerResponse;

/** Whether it answers a request (decided from its method and path alone), and the answer. */
export interface Endpoint {
  /** Its name in metrics and the access log (`procedure` "plain/<name>"): fixed, never from the request. */
  readonly name: string;
  owns(req: Req): boolean;
  serve(req: Req, res: Res): void;
}

/** An endpoint that answers nothing (a feature this build or configuration leaves off). */
export const NO_ENDPOINT: Endpoint = { name: "none", owns: () => false, serve: () => {} };

/** A request's path, without its query. */
export const pathOf = (req: Req): string => (req.url ?? "").split("?", 1)[0] ?? "";
