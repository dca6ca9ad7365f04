#!/bin/sh
# scripts/build-lock.sh COMMAND [ARG...]: runs COMMAND holding the repository's build lock, and exits
# with its status. The Makefile's builds (make build, make generate, the commands' own builds) run
# under it: two at once (make run in one terminal, make demo in another, after an edit) deleted each
# other's dist/chunks and raced buf generate's `clean: true` on gen/.
#
# The lock is a symbolic link, .build-lock, to its owner's pid: `ln -s` creates it or fails, in one
# step, on Linux and macOS alike (no flock on macOS), and the pid comes with it. A build finding it
# waits, saying so after a second; one whose owner is gone (kill -9 leaves the link) is taken over.
# A command run by the owner, and its children (make generate under make build), hold it already:
# SHOPMESH_BUILD_LOCK names the holder.
lock="$(dirname "$0")/../.build-lock"
# The state of process $1 ("" when there is none): ps's, or Linux's /proc where there is no ps (procps
# is not in a Debian slim image: there every holder looked gone, and two builds ran at once again).
state() {
  if command -v ps >/dev/null 2>&1; then ps -o stat= -p "$1" 2>/dev/null
  elif [ -d /proc/self ]; then sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1
  else echo "?" # unknown: waited for, as for a running one (the waiting line says what to do)
  fi
}
if [ -n "${SHOPMESH_BUILD_LOCK:-}" ] && [ "$(readlink "$lock" 2>/dev/null)" = "$SHOPMESH_BUILD_LOCK" ]; then
  exec "$@"
fi
tries=0
until ln -sn "$$" "$lock" 2>/dev/null; do
  owner=$(readlink "$lock" 2>/dev/null) || {
    [ -e "$lock" ] && { echo "$lock is not a lock this script made: remove it" >&2; exit 1; }
    # No lock there, and none could be made: not a race lost but a folder gone or not writable (looping
    # on, the waiter spun at full CPU for ever).
    [ -d "${lock%/*}" ] && [ -w "${lock%/*}" ] || { echo "cannot take the build lock: ${lock%/*} is gone or not writable" >&2; exit 1; }
    continue # released just now: try again
  }
  # Gone, or a zombie no one reaps (a container's init may not): `ps -p` alone counts that alive.
  case "$(state "$owner")" in "" | Z*) gone=yes ;; *) gone= ;; esac
  if [ -n "$gone" ]; then
    # Removed under a second lock, after looking again: two waiters both finding the owner gone must
    # not both remove a link, the second removing the one the first has just made.
    if mkdir "$lock.break" 2>/dev/null; then
      [ "$(readlink "$lock" 2>/dev/null)" = "$owner" ] && rm -f "$lock" &&
        echo "took over the build lock of pid $owner, which is gone" >&2
      rmdir "$lock.break"
      continue
    fi
    # Another waiter is removing it (waited for below, not spun on), or was killed doing so.
    [ -n "$(find "$lock.break" -prune -mmin +1 2>/dev/null)" ] && rmdir "$lock.break"
  fi
  tries=$((tries + 1))
  [ "$tries" = 10 ] && echo "waiting for another build (pid $owner) to finish (none running? remove .build-lock)" >&2
  sleep 0.1
done
trap 'rm -f "$lock"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
SHOPMESH_BUILD_LOCK=$$ "$@"
