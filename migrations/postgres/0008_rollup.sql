-- Precomputed chart levels of each metric history (Postgres twin of ../sqlite/0008_rollup.sql;
-- the layout is explained there).
CREATE TABLE metric_rollup (
    run_id BIGINT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key    TEXT   NOT NULL,
    level  BIGINT NOT NULL,
    chunk  BIGINT NOT NULL,
    data   BYTEA  NOT NULL,
    PRIMARY KEY (run_id, key, level, chunk)
);
