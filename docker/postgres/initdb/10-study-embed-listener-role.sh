#!/bin/bash
# First start of the data volume only (docker-entrypoint-initdb.d): the listener's login role.
#
# study_embed_listener is the NOLOGIN group role that `study-embed migrate` grants the queue
# functions to (and nothing else); it is created here first so that the login role can join it
# before the migration runs.  The password comes in as a psql variable, never spliced into SQL.
set -euo pipefail

: "${LISTENER_DB_USER:=study_embed_worker}"
if [ -z "${LISTENER_DB_PASSWORD:-}" ]; then
  echo "10-study-embed-listener-role.sh: LISTENER_DB_PASSWORD is not set" >&2
  exit 1
fi

psql --no-psqlrc -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v login="$LISTENER_DB_USER" -v password="$LISTENER_DB_PASSWORD" <<'SQL'
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'study_embed_listener') AS make_group
\gset
\if :make_group
  CREATE ROLE study_embed_listener NOLOGIN;
\endif
SELECT NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'login') AS make_login
\gset
\if :make_login
  CREATE ROLE :"login" LOGIN PASSWORD :'password' IN ROLE study_embed_listener;
\else
  ALTER ROLE :"login" LOGIN PASSWORD :'password';
  GRANT study_embed_listener TO :"login";
\endif
SQL
