/** What the gateway learns about a request before any handler runs, as Connect context values. */
import { createContextKey } from "@connectrpc/connect";
import type { Identity } from "../platform/index.js";

/** Per-request facts from the connection and headers. */
export interface ClientInfo {
  /** The client's address: the socket's peer, or the last X-Forwarded-For hop behind a trusted proxy. */
  readonly ip: string;
  /** The request id, accepted from the client when well-formed, generated otherwise. */
  readonly requestId: string;
}

/** Context value: the client behind this request. */
export const kClient = createContextKey<ClientInfo>({ ip: "", requestId: "" }, { description: "client" });
/** Context value: the verified caller (unset for the token-free reflection service). */
export const kIdentity = createContextKey<Identity | undefined>(undefined, { description: "identity" });
