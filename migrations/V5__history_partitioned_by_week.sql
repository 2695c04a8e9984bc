-- The history, partitioned by the week of `event_time` (weeks start on
-- Monday, UTC). A week, not a day: every query that reads by id visits each
-- partition, so their number is kept small (the weeks retention keeps, plus
-- two); retention's unit is a week.
--
--   popularity_events_before     every event time before the bound of V3:
--                                the rows stored before partitioning (not
--                                made when there were none)
--   popularity_events_wYYYYMMDD  one week each, from that Monday, made
--                                ahead of time by ensure_history_partitions()
--   popularity_events_default    anything no other partition takes (an event
--                                dated beyond the weeks made so far, or before
--                                the oldest one kept); moved into its week's
--                                partition when that is made
--
-- Exactly once still rests on two uniquenesses: of the record,
-- (topic, partition, log_epoch, offset), and of the event id. PostgreSQL
-- enforces a unique index only within a partition, and a record (or a
-- retried publish of one event) always has the same event time, so every
-- copy of it goes to the same partition, where that partition's unique
-- indexes refuse the second: within each partition they are exactly the
-- table-wide constraints they were.
--
-- Locks: this migration only renames and attaches (the bound is validated),
-- so it holds the history's exclusive lock for milliseconds whatever its
-- size.
DO $$
DECLARE
    bound timestamptz;
BEGIN
    SELECT (regexp_match(pg_get_constraintdef(oid), '''([^'']+)'''))[1]::timestamptz
      INTO STRICT bound
      FROM pg_constraint
     WHERE conname = 'popularity_events_before_partitions'
       AND conrelid = 'popularity_events'::regclass;

    ALTER TABLE popularity_events RENAME TO popularity_events_before;
    ALTER INDEX popularity_events_mal_id_idx RENAME TO popularity_events_before_mal_id_idx;
    ALTER INDEX popularity_events_ingested_at_idx RENAME TO popularity_events_before_ingested_at_idx;

    CREATE TABLE popularity_events (
        LIKE popularity_events_before INCLUDING DEFAULTS
    ) PARTITION BY RANGE (event_time);
    ALTER TABLE popularity_events ADD CONSTRAINT popularity_events_event_type_check
        CHECK (event_type IN ('SCORE_UPDATE', 'MEMBER_UPDATE', 'TRENDING_CHANGE'));
    -- The ids go on from the same sequence, which now belongs to the
    -- partitioned table (not to a partition retention may drop).
    ALTER SEQUENCE popularity_events_id_seq OWNED BY popularity_events.id;

    EXECUTE format(
        'ALTER TABLE popularity_events ATTACH PARTITION popularity_events_before '
        'FOR VALUES FROM (MINVALUE) TO (%L)', bound);

    -- Indexes of every partition; the existing ones of the first are taken as they are.
    CREATE INDEX popularity_events_mal_id_idx ON ONLY popularity_events (mal_id, id DESC);
    ALTER INDEX popularity_events_mal_id_idx ATTACH PARTITION popularity_events_before_mal_id_idx;
    CREATE INDEX popularity_events_ingested_at_idx ON ONLY popularity_events USING brin (ingested_at);
    ALTER INDEX popularity_events_ingested_at_idx ATTACH PARTITION popularity_events_before_ingested_at_idx;

    -- A history with nothing in it yet is daily from the start.
    IF NOT EXISTS (SELECT 1 FROM popularity_events_before) THEN
        DROP TABLE popularity_events_before;
    END IF;
END
$$;

-- A partition's own keys: the id, the record, the event id.
CREATE FUNCTION history_partition_keys(part regclass) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    name text := (SELECT relname FROM pg_class WHERE oid = part);
BEGIN
    EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I PRIMARY KEY (id)', part, name || '_pkey');
    EXECUTE format('ALTER TABLE %s ADD CONSTRAINT %I UNIQUE (topic, partition, log_epoch, "offset")',
                   part, name || '_record_key');
    EXECUTE format('CREATE UNIQUE INDEX %I ON %s (event_id) WHERE event_id IS NOT NULL',
                   name || '_event_id_key', part);
END
$$;

CREATE TABLE popularity_events_default PARTITION OF popularity_events DEFAULT;
SELECT history_partition_keys('popularity_events_default');

-- Makes the weekly partitions for every week from `first` to `last` that
-- has none, taking over what the default partition holds of that week. Safe
-- to run from several processes at once, and to run again; returns the
-- number of partitions made. A week the first partition covers is skipped.
CREATE FUNCTION ensure_history_partitions(first timestamptz, last timestamptz) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    monday timestamptz := date_trunc('week', first AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    next timestamptz;
    name text;
    made integer := 0;
BEGIN
    -- One maker at a time ("catlog-parts").
    PERFORM pg_advisory_xact_lock(7161964930453107827);
    WHILE monday < last LOOP
        next := monday + interval '7 days';
        name := 'popularity_events_w' || to_char(monday AT TIME ZONE 'UTC', 'YYYYMMDD');
        IF to_regclass(name) IS NULL THEN
            BEGIN
                EXECUTE format('CREATE TABLE %I (LIKE popularity_events INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                               name);
                PERFORM history_partition_keys(name::regclass);
                EXECUTE format(
                    'WITH moved AS (DELETE FROM popularity_events_default '
                    '               WHERE event_time >= %L AND event_time < %L RETURNING *) '
                    'INSERT INTO %I SELECT * FROM moved', monday, next, name);
                EXECUTE format('ALTER TABLE popularity_events ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                               name, monday, next);
                made := made + 1;
            EXCEPTION WHEN invalid_object_definition THEN
                -- "would overlap partition popularity_events_before": that
                -- one takes this week; nothing was made.
                NULL;
            END;
        END IF;
        monday := next;
    END LOOP;
    RETURN made;
END
$$;

-- This week's partition, and the next; `consume` keeps making them ahead
-- (see store::partitions).
SELECT ensure_history_partitions(now(), now() + interval '7 days');
