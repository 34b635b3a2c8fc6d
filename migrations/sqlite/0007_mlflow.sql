-- The MLflow-compatible API (SQLite twin of ../postgres/0007_mlflow.sql).

-- MLflow keeps every value logged at one (key, step): `n` numbers them (0 for a trainer's point,
-- which a resumed trainer overwrites; 0, 1, 2, … for values appended by an MLflow client).
CREATE TABLE metrics_new (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key    TEXT    NOT NULL,
    step   INTEGER NOT NULL,
    n      INTEGER NOT NULL DEFAULT 0,
    epoch  REAL,
    ts     REAL    NOT NULL,
    value  REAL,
    PRIMARY KEY (run_id, key, step, n)
);
INSERT INTO metrics_new (run_id, key, step, n, epoch, ts, value) SELECT run_id, key, step, 0, epoch, ts, value FROM metrics;
DROP TABLE metrics;
ALTER TABLE metrics_new RENAME TO metrics;

CREATE TABLE run_params (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key    TEXT    NOT NULL,
    value  TEXT    NOT NULL,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE run_tags (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key    TEXT    NOT NULL,
    value  TEXT    NOT NULL,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE run_inputs (
    run_id  INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    n       INTEGER NOT NULL,
    input   TEXT    NOT NULL,
    PRIMARY KEY (run_id, n)
);

CREATE TABLE experiment_tags (
    experiment_id INTEGER NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    key           TEXT    NOT NULL,
    value         TEXT    NOT NULL,
    PRIMARY KEY (experiment_id, key)
);

-- MLflow deletes softly (restore brings a run or an experiment back).
ALTER TABLE runs ADD COLUMN deleted_at REAL;
ALTER TABLE experiments ADD COLUMN deleted_at REAL;
-- An external client's last write: a run it left RUNNING shows when it was last heard from.
ALTER TABLE runs ADD COLUMN last_write_at REAL;
