-- database.sql — the statements every client runs (study_embed.database.Database): whether
-- the schema is there, whether the server answers, the queue's state.
-- Loaded by study_embed.sqlfiles.queries(); one statement under each `-- name:` header,
-- named parameters.

-- name: schema_ready
SELECT to_regtype('vector') IS NOT NULL,
       to_regprocedure('study_embed.claim(integer, interval)') IS NOT NULL
       AND to_regprocedure('study_embed.generation_models()') IS NOT NULL;

-- name: ping
SELECT 1;

-- name: status
SELECT status, live, deleted, oldest_waiting FROM study_embed.status;

-- name: served_model
SELECT study_embed.served_model();

-- name: generation_status
-- the generations and how far each covers the live rows (counts the shadow slot's)
SELECT slot, model, dimension, role, since, live, ready, failed
FROM study_embed.generation_status();

-- name: replica
-- where a reader reads: on a standby, how far its replay is behind (seconds since the last
-- replayed transaction's commit, bytes received and not yet replayed); on a primary, NULLs
SELECT pg_is_in_recovery(),
       CASE WHEN pg_is_in_recovery()
            THEN extract(epoch FROM now() - pg_last_xact_replay_timestamp())::double precision
       END,
       CASE WHEN pg_is_in_recovery()
            THEN pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint
       END;
