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
 * Reading is limited as well: events carry what a bystander must not read
 * (OrderPlaced a card token), so a service subscribes only to its own
 * inboxes (`_INBOX_<user>.`, where its requests' answers and its consumers'
 * deliveries arrive) and to the registry, and reads no stored message but
 * the registry's. And the services' users are in an account of their own,
 * which reaches the streams' only through what it imports
 * ({@link natsAuthorization}): in one account, an answer of the server's
 * sent to a JetStream API subject was obeyed (it purged every stream).
 */
import { type Bus, type BusAuth, connectBus, inboxPrefixOf } from "./bus.js";
import type { EventCatalogue } from "./catalogue.js";
import { DLQ_STREAM } from "./catalogue.js";
import type { Logger } from "./log.js";
import { MAX_ENTRY_BYTES, openRegistry, REGISTRY_BUCKET } from "./registry.js";

/** The user that creates and changes streams (and the tools that read the bus by hand). */
export const BUS_ADMIN = "admin";

/** A NATS user and the subjects it may publish on and subscribe to (undefined: any). */
export interface BusUser {
  readonly user: string;
  readonly publish?: readonly string[];
  readonly subscribe?: readonly string[];
}

/** The durable consumer of `service` on `stream`: the name its NATS user may consume, acknowledge and dead-letter as. */
export const durableOf = (service: string, stream: string) => `${service}-${stream.toLowerCase()}`;

/**
 * What `service`'s user may publish to read and consume: stream state; the registry's entries as JSON,
 * and no other stream's messages (events are not every service's to read); never `$JS.API.DIRECT.GET`,
 * whose answer is a stored message, headers and all — sent to a reply subject of the asker's choosing,
 * which the server does not check, it would republish anything the asker stored onto any subject; and
 * its own durable consumers, `<service>-<stream>` on each of `streams`, with their acknowledgements and
 * dead letters. No consumer on the registry's bucket: the registry is
 * followed by subscription (registry-watch.ts), and a consumer there would be anyone's to change.
 */
function consuming(service: string, streams: readonly string[]): string[] {
  const own = streams.flatMap((s) => {
    const d = durableOf(service, s);
    // Each verb spelled out: a wildcard in a verb's place also matches the 7-token create,
    // `CONSUMER.CREATE.<any stream>.<S>.<d>` — a consumer named S on any stream, which nats-server 2.9
    // creates whatever the last token says (a hostile round read every stream that way).
    return [
      `$JS.API.CONSUMER.CREATE.${s}.${d}`,
      // Made with a filter subject, the create names it after the durable: any filter on its own
      // durable of this stream, whose every event the service may read anyway.
      `$JS.API.CONSUMER.CREATE.${s}.${d}.>`,
      `$JS.API.CONSUMER.DURABLE.CREATE.${s}.${d}`,
      `$JS.API.CONSUMER.INFO.${s}.${d}`,
      `$JS.API.CONSUMER.MSG.NEXT.${s}.${d}`,
      `$JS.ACK.${s}.${d}.>`,
      `dlq.${d}`,
    ];
  });
  return ["$JS.API.INFO", "$JS.API.STREAM.INFO.*", `$JS.API.STREAM.MSG.GET.KV_${REGISTRY_BUCKET}`, ...own];
}

/**
 * The bus's users: {@link BUS_ADMIN}, and one per process of `consumes` (a process and the streams it
 * consumes), each allowed to publish the events of the stream named after it (`ORDER`'s for order), its
 * own registry entries, and what {@link consuming} lists for the streams it consumes (and no other: a
 * durable consumer of its own on a stream would read every event there); and to subscribe to its own
 * inboxes and the registry's subjects.
 */
export function busUsers(catalogue: EventCatalogue, consumes: Readonly<Record<string, readonly string[]>>): BusUser[] {
  const streams = catalogue.streams.filter((s) => s !== DLQ_STREAM).map((s) => s.name);
  const owned = new Set(streams.map((s) => s.toLowerCase()));
  for (const s of Object.values(consumes).flat()) {
    if (!streams.includes(s)) throw new Error(`busUsers: no event stream ${s} to consume`);
  }
  return [
    { user: BUS_ADMIN },
    ...Object.entries(consumes).map(([p, reads]) => ({
      user: p,
      publish: [...(owned.has(p) ? [`${p}.>`] : []), `$KV.${REGISTRY_BUCKET}.${p}.>`, ...consuming(p, reads)],
      subscribe: [`${inboxPrefixOf(p)}.>`, `$KV.${REGISTRY_BUCKET}.>`],
    })),
  ];
}

/** The account that holds the streams, with {@link BUS_ADMIN}. */
export const STREAMS_ACCOUNT = "STREAMS";
/** The account of the services' users, which reaches the streams only through what it imports. */
export const SERVICES_ACCOUNT = "SERVICES";

/**
 * nats-server's users for `users`, each with the password `password(user)` gives (a literal, quoted
 * here, or a `$VARIABLE` nats-server reads from its environment), in two accounts: the streams, with
 * JetStream, and the administrator ({@link STREAMS_ACCOUNT}); and the services ({@link
 * SERVICES_ACCOUNT}), which imports from the first, as services, the subjects some service may publish
 * on (each with its last token a wildcard, below). nats-server answers a request at the reply subject its asker names, unchecked, and acts
 * on an answer sent to a JetStream API subject as on a request of the account's own: in one account a
 * publish's acknowledgement, or a pull's status, sent to `$JS.API.ACCOUNT.PURGE.$G` deleted every
 * stream (a hostile round did it with the gateway's user). A request that crosses accounts is given a
 * reply subject of the server's making in the streams' account, so no answer reaches its API; back in
 * the services' account an answer reaches only what is imported there, where the users' rights allow.
 */
export function natsAuthorization(users: readonly BusUser[], password: (user: string) => string): string {
  const value = (p: string) => (/^\$[A-Z][A-Z0-9_]*$/.test(p) ? p : JSON.stringify(p));
  const quoted = (subjects: readonly string[]) => subjects.map((s) => JSON.stringify(s)).join(", ");
  const line = (u: BusUser) => {
    const rules = [
      ...(u.publish ? [`publish: { allow: [${quoted(u.publish)}] }`] : []),
      ...(u.subscribe ? [`subscribe: { allow: [${quoted(u.subscribe)}] }`] : []),
    ];
    const perms = rules.length ? `, permissions: { ${rules.join(", ")} }` : "";
    return `      { user: ${JSON.stringify(u.user)}, password: ${value(password(u.user))}${perms} }`;
  };
  const admins = users.filter((u) => !u.publish);
  const services = users.filter((u) => u.publish);
  // Imported with their last token a wildcard: an answer the server sends back into SERVICES at an
  // import's exact name (a pull's messages, at `…MSG.NEXT.ORDER.payment-order`) was forwarded to the
  // streams' account as a request of its own — another service's pull, or a dead letter under
  // another's name; at a wildcard import it is not. Who may publish what is the users' rights'.
  const importable = (s: string) => (s.endsWith(">") || s.endsWith("*") ? s : s.replace(/\.[^.]+$/, ".*"));
  const shared = [...new Set(services.flatMap((u) => u.publish ?? []).map(importable))].sort();
  // A pull's messages are many answers to one request.
  const response = (s: string) => (s.startsWith("$JS.API.CONSUMER.MSG.NEXT.") ? ", response: stream" : "");
  const exports = shared.map((s) => `      { service: ${JSON.stringify(s)}${response(s)} }`);
  const imports = shared.map(
    (s) => `      { service: { account: ${STREAMS_ACCOUNT}, subject: ${JSON.stringify(s)} } }`,
  );
  return [
    "accounts {",
    `  ${STREAMS_ACCOUNT}: {`,
    "    jetstream: enabled",
    `    users: [\n${admins.map(line).join("\n")}\n    ]`,
    `    exports: [\n${exports.join("\n")}\n    ]`,
    "  }",
    `  ${SERVICES_ACCOUNT}: {`,
    `    users: [\n${services.map(line).join("\n")}\n    ]`,
    `    imports: [\n${imports.join("\n")}\n    ]`,
    "  }",
    "}",
    "",
  ].join("\n");
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
        // As the event streams (bus.ts): no purge through a publish's acknowledgement sent there.
        deny_delete: true,
        deny_purge: true,
      });
    }
  } finally {
    await bus.close();
  }
}
