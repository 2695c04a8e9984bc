-- The history becomes partitioned by week of the event's time (V5), so that
-- retention drops whole weeks and gives their space back. The rows stored
-- so far stay where they are and become the first partition, for every
-- event time before a bound at the start of a week (Monday, UTC) one to two
-- weeks from now; weekly partitions follow from there.
--
-- Attaching a table as a partition scans it for rows outside the partition's
-- range, under a lock that stops writers, unless a validated CHECK already
-- says so. This migration adds that CHECK without looking at existing rows
-- (a moment's lock); V4 validates it while writers go on; V5 attaches.
DO $$
BEGIN
    EXECUTE format(
        'ALTER TABLE popularity_events ADD CONSTRAINT popularity_events_before_partitions '
        'CHECK (event_time < %L::timestamptz) NOT VALID',
        date_trunc('week', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' + interval '14 days');
END
$$;
