# One PostgreSQL login role per service (docs/deploy.md, "Replicas on PostgreSQL"): each may
# connect to POSTGRES_DB and owns its schema there (shopmesh_<service>, the services' default
# DATABASE_SCHEMA, created here so that no other role can take the name first), and nothing else:
# no superuser, no other service's tables, no new schema: CREATE on the database is history's alone,
# for its rebuild's view built aside (shopmesh_history_rebuilding, swapped in whole) — any role with it
# could take that name first and block every rebuild. A service makes its schema only when it is
# missing (platform/db.ts). POSTGRES_USER, the superuser, stays with PostgreSQL alone.
#
# The image's docker-entrypoint.sh sources every *.sh in /docker-entrypoint-initdb.d once, when it
# initialises an empty volume, as POSTGRES_USER over the local socket and before it listens on TCP:
# no service can connect before its role exists. Each password comes from the container's
# environment (<SERVICE>_DB_PASSWORD, from the postgres-credentials Secret).
for shopmesh_role in inventory payment order notification history; do
  shopmesh_var="$(printf %s "$shopmesh_role" | tr a-z A-Z)_DB_PASSWORD"
  psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    --set role="$shopmesh_role" --set password="${!shopmesh_var}" --set db="$POSTGRES_DB" \
    --set schema="shopmesh_$shopmesh_role" <<'SQL'
CREATE ROLE :"role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD :'password';
GRANT CONNECT ON DATABASE :"db" TO :"role";
CREATE SCHEMA :"schema" AUTHORIZATION :"role";
SQL
done
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  --set db="$POSTGRES_DB" <<'SQL'
GRANT CREATE ON DATABASE :"db" TO history;
SQL
