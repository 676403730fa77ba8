-- 005_trigger_modes.sql — re-runnable; the first half of a pair with 099_trigger_modes.sql.
-- CREATE OR REPLACE TRIGGER (010, 030, 045, 046) sets a trigger back to firing in origin mode.
-- An operator may have made study-embed's triggers on study_questions fire for logical
-- replication's apply worker too (ENABLE ALWAYS: a subscriber that embeds for itself, README
-- "Logical replication"), or for it alone, or disabled one: a migrate must not undo that
-- silently.  Each trigger's mode is remembered here, for this transaction, and restored at the
-- end of db/idempotent.
CREATE TEMP TABLE study_embed_trigger_modes ON COMMIT DROP AS
SELECT t.tgname::text AS name, t.tgenabled AS mode
FROM pg_catalog.pg_trigger t
WHERE t.tgrelid = to_regclass('public.study_questions') AND NOT t.tgisinternal
  AND t.tgname LIKE 'study\_embed\_%' AND t.tgenabled <> 'O';
