-- Charts that load at once (SQLite twin of ../postgres/0008_rollup.sql).

-- Precomputed chart levels of each metric history: level L holds buckets of 4^L steps, `chunk` C
-- the buckets C*32 .. C*32+31, `data` their summaries (count, first step, min, max and last
-- point) as fixed-size little-endian records (server/src/downsample.rs). Kept in the transaction
-- that writes the points; histories recorded before this migration are summarized when the
-- server starts. A rowid table: its rows (up to ~4.7 KB) stay on their page where a WITHOUT
-- ROWID table would spill every one into overflow pages.
CREATE TABLE metric_rollup (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key    TEXT    NOT NULL,
    level  INTEGER NOT NULL,
    chunk  INTEGER NOT NULL,
    data   BLOB    NOT NULL,
    PRIMARY KEY (run_id, key, level, chunk)
);

-- The metric points clustered by their primary key (one b-tree, not a table plus an index):
-- a key's history is one range of pages, and an insert touches one tree.
CREATE TABLE metrics_new (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key    TEXT    NOT NULL,
    step   INTEGER NOT NULL,
    n      INTEGER NOT NULL DEFAULT 0,
    epoch  REAL,
    ts     REAL    NOT NULL,
    value  REAL,
    PRIMARY KEY (run_id, key, step, n)
) WITHOUT ROWID;
INSERT INTO metrics_new (run_id, key, step, n, epoch, ts, value) SELECT run_id, key, step, n, epoch, ts, value FROM metrics;
DROP TABLE metrics;
ALTER TABLE metrics_new RENAME TO metrics;
