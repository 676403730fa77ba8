-- database.sql — the statements every client runs (study_embed.database.Database): whether
-- the schema is there, whether the server answers, the queue's state.
-- Loaded by study_embed.sqlfiles.queries(); one statement under each `-- name:` header,
-- named parameters.

-- name: schema_ready
SELECT to_regtype('vector') IS NOT NULL,
       to_regprocedure('study_embed.claim(integer, interval)') IS NOT NULL;

-- name: ping
SELECT 1;

-- name: status
SELECT status, live, deleted, oldest_waiting FROM study_embed.status;
