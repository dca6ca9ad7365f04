/**
 * Who may do what on the bus. Every process connects as a NATS user of its
 * own (NATS_USER, NATS_PASSWORD), and nats-server lets each publish only
 * what is its to publish: a context's events only by the service of that
 * context (`order.>` only by order), its own service-registry entries, and
 * the JetStream calls of its own durable consumers (and their dead
 * letters) and of reading stream state. Creating, changing or deleting a
 * stream is the administrator's alone — a stream's configuration can make
 * the server itself republish into any subject — so the streams and the
 * registry bucket are created by {@link provisionBus}, run as
 * {@link BUS_ADMIN} before the services start (`make run`; the nats-streams
 * Job in Kubernetes). The server sends its answers to whatever reply subject
 * a request names, unchecked, so no answer a service may ask for carries a
 * stored message as it was published (see consuming()), and consumers
 * refuse what is not on its type's own subject (inbox.ts decodeEvent).
 * Reading is not limited: every service may subscribe to everything.
 */
import { type Bus, type BusAuth, connectBus } from "./bus.js";
import type { EventCatalogue } from "./catalogue.js";
import { DLQ_STREAM } from "./catalogue.js";
import type { Logger } from "./log.js";
import { MAX_ENTRY_BYTES, openRegistry, REGISTRY_BUCKET } from "./registry.js";

/** The user that creates and changes streams (and the tools that read the bus by hand). */
export const BUS_ADMIN = "admin";

/** A NATS user and the subjects it may publish on (undefined: any). */
export interface BusUser {
  readonly user: string;
  readonly publish?: readonly string[];
}

/** The durable consumer of `service` on `stream`: the name its NATS user may consume, acknowledge and dead-letter as. */
export const durableOf = (service: string, stream: string) => `${service}-${stream.toLowerCase()}`;

/**
 * What `service`'s user may publish to read and consume: stream state and stored messages as JSON
 * (never `$JS.API.DIRECT.GET`, whose answer is a stored message, headers and all — sent to a reply
 * subject of the asker's choosing, which the server does not check, it would republish anything the
 * asker stored onto any subject); and its own durable consumers, `<service>-<stream>` on each stream,
 * with their acknowledgements and dead letters. No consumer on the registry's bucket: the registry is
 * followed by subscription (registry-watch.ts), and a consumer there would be anyone's to change.
 */
function consuming(service: string, streams: readonly string[]): string[] {
  const own = streams.flatMap((s) => {
    const d = durableOf(service, s);
    return [
      `$JS.API.CONSUMER.*.${s}.${d}`,
      `$JS.API.CONSUMER.*.${s}.${d}.>`,
      `$JS.API.CONSUMER.*.*.${s}.${d}`,
      `$JS.ACK.${s}.${d}.>`,
      `dlq.${d}`,
    ];
  });
  return ["$JS.API.INFO", "$JS.API.STREAM.INFO.*", "$JS.API.STREAM.MSG.GET.*", ...own];
}

/**
 * The bus's users: {@link BUS_ADMIN}, and one per process in `processes`, each allowed to publish the
 * events of the stream named after it (`ORDER`'s for order), its own registry entries, and what
 * {@link consuming} lists.
 */
export function busUsers(catalogue: EventCatalogue, processes: readonly string[]): BusUser[] {
  const streams = catalogue.streams.filter((s) => s !== DLQ_STREAM).map((s) => s.name);
  const owned = new Set(streams.map((s) => s.toLowerCase()));
  return [
    { user: BUS_ADMIN },
    ...processes.map((p) => ({
      user: p,
      publish: [...(owned.has(p) ? [`${p}.>`] : []), `$KV.${REGISTRY_BUCKET}.${p}.>`, ...consuming(p, streams)],
    })),
  ];
}

/**
 * nats-server's `authorization` block for `users`, each with the password `password(user)` gives: a
 * literal (quoted here) or a `$VARIABLE` nats-server reads from its environment.
 */
export function natsAuthorization(users: readonly BusUser[], password: (user: string) => string): string {
  const value = (p: string) => (/^\$[A-Z][A-Z0-9_]*$/.test(p) ? p : JSON.stringify(p));
  const lines = users.map((u) => {
    const perms = u.publish
      ? `, permissions: { publish: { allow: [${u.publish.map((s) => JSON.stringify(s)).join(", ")}] } }`
      : "";
    return `    { user: ${JSON.stringify(u.user)}, password: ${value(password(u.user))}${perms} }`;
  });
  return `authorization {\n  users: [\n${lines.join("\n")}\n  ]\n}\n`;
}

/**
 * Creates (or updates) the catalogue's streams with `replicas` replicas and the service registry's
 * bucket, as {@link BUS_ADMIN} would: what the services' own users may not do. Resolves once done.
 */
export async function provisionBus(
  url: string,
  catalogue: EventCatalogue,
  log: Logger,
  opts: { auth?: BusAuth; replicas?: number; registry?: boolean } = {},
): Promise<void> {
  const bus: Bus = await connectBus(url, "provision", log, {
    streams: catalogue.streams,
    ...(opts.replicas ? { replicas: opts.replicas } : {}),
    ...(opts.auth ? { auth: opts.auth } : {}),
  });
  try {
    if (opts.registry !== false) {
      await openRegistry(bus.nc, opts.replicas ? { replicas: opts.replicas } : {});
      // Neither direct reads (see consuming()) nor roll-ups: one `Nats-Rollup: all` on a service's own
      // key would purge every service's entries. A bucket made before this is changed here.
      await bus.jsm.streams.update(`KV_${REGISTRY_BUCKET}`, {
        allow_direct: false,
        allow_rollup_hdrs: false,
        max_msg_size: MAX_ENTRY_BYTES,
      });
    }
  } finally {
    await bus.close();
  }
}
