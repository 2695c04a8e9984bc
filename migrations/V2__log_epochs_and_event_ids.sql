-- A partition's log can start again at offset 0: the topic deleted and
-- created again, a broker that lost its storage, a fresh demo broker beside
-- a kept database. An offset then names a different record than before, so
-- a stored offset is only trusted for the log it came from:
--
-- * each (group, topic, partition) counts the logs it has read as
--   `log_epoch` (0 for the first), and remembers the record just before its
--   next offset, so a new log is recognised even when it has already grown
--   past the stored offset;
-- * history rows and dead letters say which log they came from, so the
--   records of a new log are never taken for old ones with the same offset.
--
-- A record may also carry a unique event id (header `catlog-event-id`): a
-- publish retried after a lost acknowledgement lands at a new offset with
-- the same id, and is stored once.
--
-- Existing rows keep their meaning: they are the first log of each partition.

ALTER TABLE consumer_offsets
    ADD COLUMN log_epoch        integer NOT NULL DEFAULT 0,
    ADD COLUMN last_record_time timestamptz,
    ADD COLUMN last_event_id    uuid;

ALTER TABLE popularity_events
    ADD COLUMN log_epoch integer NOT NULL DEFAULT 0,
    ADD COLUMN event_id  uuid;
ALTER TABLE popularity_events DROP CONSTRAINT popularity_events_topic_partition_offset_key;
ALTER TABLE popularity_events
    ADD CONSTRAINT popularity_events_record_key UNIQUE (topic, partition, log_epoch, "offset");
CREATE UNIQUE INDEX popularity_events_event_id_key ON popularity_events (event_id)
    WHERE event_id IS NOT NULL;

ALTER TABLE dead_letters
    ADD COLUMN log_epoch integer NOT NULL DEFAULT 0;
ALTER TABLE dead_letters DROP CONSTRAINT dead_letters_topic_partition_offset_key;
ALTER TABLE dead_letters
    ADD CONSTRAINT dead_letters_record_key UNIQUE (topic, partition, log_epoch, "offset");

-- Every time a consumer found a partition's log new: when, what it had
-- stored, what the broker showed, and where it started again.
CREATE TABLE log_resets (
    id            bigserial PRIMARY KEY,
    group_id      text NOT NULL,
    topic         text NOT NULL,
    partition     integer NOT NULL,
    log_epoch     integer NOT NULL,
    stored_offset bigint NOT NULL,
    log_end       bigint NOT NULL,
    restart_at    bigint NOT NULL,
    reason        text NOT NULL,
    detected_at   timestamptz NOT NULL DEFAULT now()
);
