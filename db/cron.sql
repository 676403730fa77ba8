-- cron.sql — schedule study_embed.tick() every minute (the safety net under NOTIFY).
--
-- Run by `make migrate` in the database where pg_cron lives (`SHOW cron.database_name`), which
-- is often not the application database: the job is scheduled *into* the application database.
-- psql variables: :app_db (the application database).  A named job is an upsert.
CREATE EXTENSION IF NOT EXISTS pg_cron;
SELECT cron.schedule_in_database('study_embed_tick:' || :'app_db', '* * * * *',
                                 'SELECT study_embed.tick()', :'app_db') AS jobid;
