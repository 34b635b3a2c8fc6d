-- Precomputed chart levels of each metric history (SQLite twin of ../postgres/0008_rollup.sql).
-- level L holds buckets of 4^L steps, `chunk` C the buckets C*32 .. C*32+31, `data` their
-- summaries (count, first step, min, max and last point) as fixed-size little-endian records
-- (server/src/downsample.rs). Kept in the transaction that writes the points; histories
-- recorded before this migration are summarized when the server starts.
CREATE TABLE metric_rollup (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key    TEXT    NOT NULL,
    level  INTEGER NOT NULL,
    chunk  INTEGER NOT NULL,
    data   BLOB    NOT NULL,
    PRIMARY KEY (run_id, key, level, chunk)
) WITHOUT ROWID;
