-- 020_wake.sql — re-runnable.  The listener wake handshake: the NOTIFY channel, the sleep lock,
-- what "something is claimable" means, and the functions a listener sleeps and wakes with.
-- Writers (030_counts.sql's row trigger, 040_queue.sql's release and requeue) call _wake().

-- ------------------------------------------------------------------------------------------
-- Waking listeners without making writers pay for it
-- ------------------------------------------------------------------------------------------
--
-- A transaction that sent NOTIFY takes a cluster-wide lock while it commits, so notifying
-- writers serialise their commits.  Writers therefore notify only while a listener sleeps:
--
--   * a listener that found nothing to do takes the *sleep lock* (an advisory lock) in exclusive
--     mode before it waits for a notification (study_embed.listener_sleep), and gives it back
--     when it wakes (study_embed.listener_wake);
--   * a statement that leaves a claimable row tries the same lock in shared mode, held until it
--     commits: when that fails a listener sleeps (or is about to), and the statement sends
--     NOTIFY; when it succeeds no listener sleeps, and none is sent.
--
-- No wake-up is lost: a listener's exclusive request waits for every writer that holds the
-- shared lock, i.e. that skipped its NOTIFY, to commit, and then it looks for work once more
-- before it sleeps.  A writer that comes while it waits finds the lock wanted and notifies.

CREATE OR REPLACE FUNCTION study_embed.channel()
RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN 'study_embed';
COMMENT ON FUNCTION study_embed.channel() IS
    'The NOTIFY channel that wakes listeners when something becomes claimable.';

-- The sleep lock's key (two int4: 'SEMB', 1).  Advisory locks are per database.
CREATE OR REPLACE FUNCTION study_embed.sleep_lock_key()
RETURNS integer[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY[1397048642, 1];
COMMENT ON FUNCTION study_embed.sleep_lock_key() IS
    'The advisory lock (classid, objid) a sleeping listener holds exclusively.';

-- Called by every statement that leaves a row claimable: NOTIFY only when a listener sleeps.
CREATE OR REPLACE FUNCTION study_embed._wake(reason text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k integer[] := study_embed.sleep_lock_key();
BEGIN
    IF NOT pg_try_advisory_xact_lock_shared(k[1], k[2]) THEN
        PERFORM pg_notify(study_embed.channel(), reason);
    END IF;
END;
$$;

-- Is anything claimable now?  (The claim's own predicate.)
CREATE OR REPLACE FUNCTION study_embed._claimable()
RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
RETURN EXISTS (
    SELECT 1 FROM public.study_questions q
    WHERE q.deleted_at IS NULL AND q.embedding_queued_at <= now()     -- the queue index
      AND q.embedding_due_at <= now());

-- Called by a listener that found nothing to do, on the connection it LISTENs on.  Returns:
--   'asleep'  it now holds the sleep lock and nothing is claimable: wait for a NOTIFY;
--   'work'    something became claimable meanwhile (the lock is not held): drain again;
--   'other'   another listener sleeps holding the lock: wait for the NOTIFY that wakes both;
--   'busy'    writers kept the lock for wait_ms: drain again, then try again.
CREATE OR REPLACE FUNCTION study_embed.listener_sleep(wait_ms integer DEFAULT 1000)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '1s'       -- scopes the set_config below to this call
AS $$
DECLARE
    k integer[] := study_embed.sleep_lock_key();
BEGIN
    PERFORM study_embed.listener_wake();      -- never hold it twice
    IF NOT pg_try_advisory_lock(k[1], k[2]) THEN
        IF EXISTS (SELECT 1 FROM pg_locks l
                   WHERE l.locktype = 'advisory' AND l.classid = k[1]::oid
                     AND l.objid = k[2]::oid AND l.objsubid = 2
                     AND l.mode = 'ExclusiveLock' AND l.granted
                     AND l.database = (SELECT d.oid FROM pg_database d
                                       WHERE d.datname = current_database())) THEN
            RETURN 'other';
        END IF;
        PERFORM set_config('lock_timeout', greatest(coalesce(wait_ms, 1000), 1)::text, true);
        BEGIN
            PERFORM pg_advisory_lock(k[1], k[2]);
        EXCEPTION WHEN lock_not_available THEN
            RETURN 'busy';
        END;
    END IF;
    IF study_embed._claimable() THEN
        PERFORM study_embed.listener_wake();
        RETURN 'work';
    END IF;
    RETURN 'asleep';
END;
$$;
COMMENT ON FUNCTION study_embed.listener_sleep(integer) IS
    'A listener with nothing to do takes the sleep lock (writers then NOTIFY): asleep, work, '
    'other or busy.';

CREATE OR REPLACE FUNCTION study_embed.listener_wake()
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k integer[] := study_embed.sleep_lock_key();
BEGIN
    WHILE pg_advisory_unlock(k[1], k[2]) LOOP END LOOP;
END;
$$;
COMMENT ON FUNCTION study_embed.listener_wake() IS
    'Give back the sleep lock (writers stop sending NOTIFY).';
