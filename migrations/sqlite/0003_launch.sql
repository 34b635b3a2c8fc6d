-- Runs that outlive the server. Twin: ../postgres/0003_launch.sql.
-- backend: where the run executes ("local" or "slurm"); resources: its Slurm resources (JSON);
-- handle: the launcher's handle of the current attempt (JSON: {"backend":"local","pid":..} or
-- {"backend":"slurm","job_id":..}); backend_state: what the backend last said (JSON: Slurm state,
-- reason, node); events_offset / stderr_offset: bytes of the attempt's events.jsonl / stderr.log
-- already recorded, written in the same transaction as the rows they produced (exactly once);
-- stop_requested_at: a stop asked through CRT Lab (kept here so a restarted server still knows);
-- terminal: the trainer's last terminal event (finished / stopped / failed: ...), recorded with it.
ALTER TABLE runs ADD COLUMN backend TEXT NOT NULL DEFAULT 'local';
ALTER TABLE runs ADD COLUMN resources TEXT;
ALTER TABLE runs ADD COLUMN handle TEXT;
ALTER TABLE runs ADD COLUMN backend_state TEXT;
ALTER TABLE runs ADD COLUMN events_offset INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN stderr_offset INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN stop_requested_at REAL;
ALTER TABLE runs ADD COLUMN terminal TEXT;

-- Non-finite metric values are kept: a NULL value is NaN (SQLite turns a bound NaN into NULL);
-- +-inf are stored as SQLite's infinite REALs. SQLite cannot drop NOT NULL in place, so the two
-- tables are rebuilt.
CREATE TABLE metrics_new (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key    TEXT    NOT NULL,
    step   INTEGER NOT NULL,
    epoch  REAL,
    ts     REAL    NOT NULL,
    value  REAL,
    PRIMARY KEY (run_id, key, step)
);
INSERT INTO metrics_new SELECT run_id, key, step, epoch, ts, value FROM metrics;
DROP TABLE metrics;
ALTER TABLE metrics_new RENAME TO metrics;

CREATE TABLE metric_latest_new (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key    TEXT    NOT NULL,
    step   INTEGER NOT NULL,
    epoch  REAL,
    ts     REAL    NOT NULL,
    value  REAL,
    PRIMARY KEY (run_id, key)
);
INSERT INTO metric_latest_new SELECT run_id, key, step, epoch, ts, value FROM metric_latest;
DROP TABLE metric_latest;
ALTER TABLE metric_latest_new RENAME TO metric_latest;
