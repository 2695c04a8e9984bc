-- The pipeline's tables: current state, history, offsets, dead letters.

-- One row per anime: its current state. Each measure keeps the time of the
-- event that set it, so an older event never overwrites a newer value.
CREATE TABLE live_popularity (
    mal_id             integer PRIMARY KEY CHECK (mal_id >= 1),
    title              text NOT NULL,
    current_score      numeric(4, 2),
    score_updated_at   timestamptz,
    live_members       bigint,
    members_updated_at timestamptz,
    trending_rank      integer,
    rank_updated_at    timestamptz,
    popularity_change  numeric NOT NULL,
    last_event_type    text NOT NULL,
    last_update        timestamptz NOT NULL,
    event_count        bigint NOT NULL DEFAULT 0,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- The history: one row per valid event, one per Kafka record at most.
CREATE TABLE popularity_events (
    id                bigserial PRIMARY KEY,
    topic             text NOT NULL,
    partition         integer NOT NULL,
    "offset"          bigint NOT NULL,
    mal_id            integer NOT NULL,
    title             text NOT NULL,
    event_type        text NOT NULL
                      CHECK (event_type IN ('SCORE_UPDATE', 'MEMBER_UPDATE', 'TRENDING_CHANGE')),
    current_score     numeric(4, 2),
    live_members      bigint,
    trending_rank     integer,
    popularity_change numeric NOT NULL,
    event_time        timestamptz NOT NULL,
    ingested_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, partition, "offset")
);
CREATE INDEX popularity_events_mal_id_idx ON popularity_events (mal_id, id DESC);
CREATE INDEX popularity_events_ingested_at_idx ON popularity_events USING brin (ingested_at);

-- Where each group is: the next offset to read, written in the same
-- transaction as the rows it covers.
CREATE TABLE consumer_offsets (
    group_id    text NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, topic, partition)
);

-- Records that are not valid events, kept byte for byte with the reason.
CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    "offset"    bigint NOT NULL,
    record_key  bytea,
    payload     bytea,
    reason      text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (topic, partition, "offset")
);

-- The original design's monitoring view:
--   SELECT * FROM "LivePopularity" ORDER BY "lastUpdate" DESC LIMIT 10;
CREATE VIEW "LivePopularity" AS
SELECT mal_id            AS "malId",
       title             AS "title",
       current_score     AS "currentScore",
       live_members      AS "liveMembers",
       trending_rank     AS "trendingRank",
       popularity_change AS "popularityChange",
       last_update       AS "lastUpdate"
FROM live_popularity;
