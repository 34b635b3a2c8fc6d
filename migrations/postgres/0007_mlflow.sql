-- The MLflow-compatible API (Postgres twin of ../sqlite/0007_mlflow.sql).

-- MLflow keeps every value logged at one (key, step): `n` numbers them (0 for a trainer's point,
-- which a resumed trainer overwrites; 0, 1, 2, … for values appended by an MLflow client).
ALTER TABLE metrics ADD COLUMN n BIGINT NOT NULL DEFAULT 0;
ALTER TABLE metrics DROP CONSTRAINT metrics_pkey;
ALTER TABLE metrics ADD PRIMARY KEY (run_id, key, step, n);

CREATE TABLE run_params (
    run_id BIGINT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key    TEXT   NOT NULL,
    value  TEXT   NOT NULL,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE run_tags (
    run_id BIGINT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key    TEXT   NOT NULL,
    value  TEXT   NOT NULL,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE run_inputs (
    run_id BIGINT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    n      BIGINT NOT NULL,
    input  TEXT   NOT NULL,
    PRIMARY KEY (run_id, n)
);

CREATE TABLE experiment_tags (
    experiment_id BIGINT NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    key           TEXT   NOT NULL,
    value         TEXT   NOT NULL,
    PRIMARY KEY (experiment_id, key)
);

-- MLflow deletes softly (restore brings a run or an experiment back).
ALTER TABLE runs ADD COLUMN deleted_at DOUBLE PRECISION;
ALTER TABLE experiments ADD COLUMN deleted_at DOUBLE PRECISION;
-- An external client's last write: a run it left RUNNING shows when it was last heard from.
ALTER TABLE runs ADD COLUMN last_write_at DOUBLE PRECISION;
