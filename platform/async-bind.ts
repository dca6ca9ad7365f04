/**
 * `AsyncResource.prototype.bind` without the deprecated `asyncResource`
 * property on what it returns — installed by every system process
 * (lifecycle.ts), where Node still attaches that property.
 *
 * Why: Node (20, and later releases: nodejs/node#58618 would remove it) has
 * runtime-deprecated the property since 20 (DEP0172) but still defines it on
 * every bound function: an accessor whose getter and setter are each wrapped
 * by `deprecate()`, and each wrapper is given the inner function as its
 * prototype. Every bound function so gets hidden classes of its own, which V8
 * allocates in the old generation, where only a full collection frees them;
 * through their prototype they reach the inner getter, whose closure is
 * `bind`'s own and holds the function bound. node:http2's client binds one
 * function per request (`ClientHttp2Session.request`), and that function
 * holds the stream: each upstream call of the gateway, and every call between
 * services, paid in CPU, and left its stream, with everything its listeners
 * reach, in the old generation until a full collection (docs/performance.md,
 * "Memory", has the measurements).
 *
 * What stays the same: the bound function runs `fn` through the resource's
 * `runInAsyncScope` (its async context, `this` and arguments passed on), is
 * named and sized as Node's, and a non-function is refused by Node's own
 * check, and it cannot be called with `new` (a method, as Node's is). What
 * goes: the deprecated accessor — reading `bound.asyncResource`, which gave
 * the resource with a DeprecationWarning, gives undefined; nothing in this
 * system or its packages reads it.
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
 * Replaces `AsyncResource.prototype.bind`, for the whole process, with the lean version when this
 * Node needs it (a no-op otherwise, a second call included); returns what puts Node's back.
 */
export function installLeanAsyncBind(): () => void {
  const nodeBind = AsyncResource.prototype.bind;
  if (!nodeBindsWithAccessor()) return () => {};
  // A method, as Node's is: `new resource.bind(fn)` is a TypeError, not an object.
  const { bind } = {
    bind(this: AsyncResource, fn: Fn, thisArg?: unknown): Fn {
      if (typeof fn !== "function") return (nodeBind as NodeBind).call(this, fn, thisArg) as Fn; // Node's TypeError
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
    },
  };
  AsyncResource.prototype.bind = bind as typeof nodeBind;
  return () => {
    // Only its own: a bind installed since then by someone else stays.
    if (AsyncResource.prototype.bind === (bind as typeof nodeBind)) AsyncResource.prototype.bind = nodeBind;
  };
}
