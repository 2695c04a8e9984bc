-- Checks the rows stored so far against V3's bound. This reads the whole
-- history, under a lock that lets reads and writes go on (SHARE UPDATE
-- EXCLUSIVE).
ALTER TABLE popularity_events VALIDATE CONSTRAINT popularity_events_before_partitions;
