#!/usr/bin/env bash
# Generates the Python message modules and gRPC stubs for shopmesh from
# proto/ into clients/python/gen/ (git-ignored; rebuilt on every run).
# Needs protoc and a gRPC Python plugin: grpcio-tools (python -m
# grpc_tools.protoc) when the interpreter has it, otherwise Debian's
# protobuf-compiler + protobuf-compiler-grpc (grpc_python_plugin).
# PYTHON names the interpreter to probe for grpcio-tools (default python3).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$here/gen"
google="$root/node_modules/google-proto-files"
python="${PYTHON:-python3}"

[ -d "$google" ] || { echo "generate.sh: $google missing: run 'npm ci' (google/api protos come from google-proto-files)" >&2; exit 1; }

if "$python" -c 'import grpc_tools.protoc' 2>/dev/null; then
  protoc=("$python" -m grpc_tools.protoc)
  plugin=()
else
  command -v protoc >/dev/null && command -v grpc_python_plugin >/dev/null || {
    echo "generate.sh: needs protoc and grpc_python_plugin (apt-get install protobuf-compiler protobuf-compiler-grpc) or grpcio-tools" >&2
    exit 1
  }
  protoc=(protoc)
  plugin=("--plugin=protoc-gen-grpc_python=$(command -v grpc_python_plugin)")
fi

cd "$root"
mapfile -t shopmesh < <(cd proto && find shopmesh -name '*.proto' | LC_ALL=C sort)

# The generated modules import the google/api (and google/rpc) modules their
# protos import, so generate those too: the transitive closure of such
# imports. google/protobuf/* ships with protobuf itself.
imports_of() { sed -n 's|^import "\(google/[a-z]*/[^"]*\)";|\1|p' "$@" | grep -v '^google/protobuf/' || true; }
declare -A seen=()
queue=()
for f in $(imports_of "${shopmesh[@]/#/proto/}"); do queue+=("$f"); done
while [ ${#queue[@]} -gt 0 ]; do
  f="${queue[0]}"
  queue=("${queue[@]:1}")
  [ -n "${seen[$f]:-}" ] && continue
  seen[$f]=1
  for g in $(imports_of "$google/$f"); do queue+=("$g"); done
done

rm -rf "$out"
mkdir -p "$out"
"${protoc[@]}" "${plugin[@]}" -I proto -I "$google" \
  --python_out="$out" --grpc_python_out="$out" \
  "${shopmesh[@]}" "${!seen[@]}"
