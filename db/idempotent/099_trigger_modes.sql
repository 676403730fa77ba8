-- 099_trigger_modes.sql — re-runnable; the second half of 005_trigger_modes.sql: every
-- study-embed trigger on study_questions fires again in the mode it had before this migrate
-- (ENABLE ALWAYS, ENABLE REPLICA, DISABLE).
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT m.name, m.mode
             FROM pg_temp.study_embed_trigger_modes m
             JOIN pg_catalog.pg_trigger t
               ON t.tgname = m.name AND t.tgrelid = 'public.study_questions'::regclass
             WHERE t.tgenabled <> m.mode
             ORDER BY m.name LOOP
        EXECUTE format('ALTER TABLE public.study_questions %s TRIGGER %I',
                       CASE r.mode WHEN 'A' THEN 'ENABLE ALWAYS' WHEN 'R' THEN 'ENABLE REPLICA'
                                   ELSE 'DISABLE' END,
                       r.name);
    END LOOP;
END;
$$;
