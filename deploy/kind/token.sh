#!/usr/bin/env bash
# Prints a development JWT for the kind deployment: RS256, signed with the
# dev key in deploy/kind/dev-jwt/ (public, like the local HS256 dev secret:
# never use it outside a throwaway cluster). The ingress RequestAuthentication
# and the gateway both verify it with the matching public key.
#   deploy/kind/token.sh [user] [role[,role...]]   (make kind-token USER=alice ROLE=admin)
# Needs bash and openssl. Valid for TOKEN_TTL seconds (default 3600, at most 86400).
set -euo pipefail

user=${1:-alice}
roles=${2:-customer}
key=${JWT_PRIVATE_KEY_FILE:-"$(dirname "$0")/dev-jwt/private.pem"}
issuer=${JWT_ISSUER:-shopmesh-kind}
audience=${JWT_AUDIENCE:-shopmesh}
kid=${JWT_KID:-shopmesh-kind-dev}
ttl=${TOKEN_TTL:-3600}

if [[ ! $user =~ ^[A-Za-z0-9._:@-]{1,128}$ ]]; then
  echo "user must be 1..128 of [A-Za-z0-9._:@-], got '$user'" >&2
  exit 2
fi
# The gateway refuses any role it does not know (platform/identity.ts ROLES).
if [[ ! $roles =~ ^(customer|admin)(,(customer|admin))*$ ]]; then
  echo "roles must be a comma-separated list of customer, admin; got '$roles'" >&2
  exit 2
fi
# ...and any token living longer than JWT_MAX_LIFETIME_S (default one day).
if [[ ! $ttl =~ ^[0-9]+$ ]] || ((ttl < 1 || ttl > 86400)); then
  echo "TOKEN_TTL must be 1..86400 seconds, got '$ttl'" >&2
  exit 2
fi

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }

now=$(date +%s)
roles_json="\"${roles//,/\",\"}\""
header=$(printf '{"alg":"RS256","typ":"JWT","kid":"%s"}' "$kid" | b64url)
payload=$(printf '{"sub":"%s","roles":[%s],"iss":"%s","aud":"%s","iat":%d,"exp":%d}' \
  "$user" "$roles_json" "$issuer" "$audience" "$now" "$((now + ttl))" | b64url)
signature=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$key" -binary | b64url)
printf '%s.%s.%s\n' "$header" "$payload" "$signature"
