/**
 * `AsyncResource.prototype.bind` without the deprecated `asyncResource`
 * property on what it returns — installed by every system process
 * (lifecycle.ts), where Node still attaches that property.
 *
 * Why: Node (20 to at least 24) runtime-deprecates the property (DEP0172)
 * but still defines it on every bound function, as an accessor pair of two
 * fresh `deprecate()` wrappers, each given the caller's function as its
 * prototype. Every bound function so gets hidden classes of its own, and V8
 * allocates those in the old generation, where only a full collection frees
 * them. node:http2's client binds one function per request
 * (`ClientHttp2Session.request`), so each upstream call of the gateway and
 * every call between services paid for it twice over: in CPU, and in old
 * generation that grew with every call. A bare node:http2 client measured
 * ~2.4 KB promoted into the old generation per request with Node's `bind`,
 * none with this one, and half the CPU per request
 * (docs/performance.md, "Memory").
 *
 * What stays the same: the bound function runs `fn` through the resource's
 * `runInAsyncScope` (its async context, `this` and arguments passed on), is
 * named and sized as Node's, and a non-function is refused by Node's own
 * check. What goes: the deprecated accessor, which would only have printed
 * a DeprecationWarning; nothing in this system or its packages reads it.
 */
import { AsyncResource } from "node:async_hooks";

type Fn = (...args: unknown[]) => unknown;
/** Node's `bind` as it runs (its declared type has no `thisArg`). */
type NodeBind = (this: AsyncResource, fn: unknown, thisArg?: unknown) => unknown;

/** Whether this Node attaches the deprecated accessor to bound functions. */
export function nodeBindsWithAccessor(): boolean {
  const bound = new AsyncResource("probe").bind(() => {});
  return Object.hasOwn(bound, "asyncResource");
}

/**
 * Replaces `AsyncResource.prototype.bind` with the lean version when this Node needs it (a no-op
 * otherwise); returns what puts Node's back.
 */
export function leanAsyncBind(): () => void {
  const nodes = AsyncResource.prototype.bind;
  if (!nodeBindsWithAccessor()) return () => {};
  function bind(this: AsyncResource, fn: Fn, thisArg?: unknown): Fn {
    if (typeof fn !== "function") return (nodes as NodeBind).call(this, fn, thisArg) as Fn; // Node's TypeError
    const resource = this;
    let bound: Fn;
    if (thisArg === undefined) {
      bound = function (this: unknown, ...args: unknown[]) {
        return resource.runInAsyncScope(fn, this, ...args);
      };
    } else {
      bound = resource.runInAsyncScope.bind(resource, fn, thisArg);
    }
    Object.defineProperty(bound, "length", { value: fn.length, configurable: true });
    return bound;
  }
  AsyncResource.prototype.bind = bind as typeof nodes;
  return () => {
    AsyncResource.prototype.bind = nodes;
  };
}
