-- CRT Lab schema (SQLite). Times are Unix seconds (REAL); JSON documents are TEXT.
-- The Postgres twin lives in ../postgres/0001_init.sql: keep them in step.

CREATE TABLE experiments (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    tags        TEXT    NOT NULL DEFAULT '[]',
    created_at  REAL    NOT NULL,
    updated_at  REAL    NOT NULL
);

CREATE TABLE runs (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    experiment_id   INTEGER NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    name            TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    config          TEXT    NOT NULL,
    resolved_config TEXT,
    -- copies of config fields, so runs can be filtered and indexed without JSON functions
    arch            TEXT,
    method          TEXT,
    dataset         TEXT,
    sigma           REAL,
    out_dir         TEXT    NOT NULL,
    created_at      REAL    NOT NULL,
    queued_at       REAL    NOT NULL,
    started_at      REAL,
    finished_at     REAL,
    wall_time_s     REAL    NOT NULL DEFAULT 0,
    attempt         INTEGER NOT NULL DEFAULT 0,
    pid             INTEGER,
    pgid            INTEGER,
    exit_code       INTEGER,
    exit_signal     INTEGER,
    error           TEXT,
    summary         TEXT,
    progress_phase  TEXT,
    progress_done   INTEGER,
    progress_total  INTEGER,
    progress_unit   TEXT
);
CREATE INDEX runs_experiment ON runs(experiment_id);
CREATE INDEX runs_status ON runs(status);

CREATE TABLE run_parents (
    run_id    INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    parent_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    position  INTEGER NOT NULL,
    PRIMARY KEY (run_id, parent_id)
);
CREATE INDEX run_parents_parent ON run_parents(parent_id);

CREATE TABLE metrics (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key    TEXT    NOT NULL,
    step   INTEGER NOT NULL,
    epoch  REAL,
    ts     REAL    NOT NULL,
    value  REAL    NOT NULL,
    PRIMARY KEY (run_id, key, step)
);

CREATE TABLE metric_latest (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key    TEXT    NOT NULL,
    step   INTEGER NOT NULL,
    epoch  REAL,
    ts     REAL    NOT NULL,
    value  REAL    NOT NULL,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE logs (
    id     INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    ts     REAL    NOT NULL,
    stream TEXT    NOT NULL,
    level  TEXT,
    line   TEXT    NOT NULL
);
CREATE INDEX logs_run ON logs(run_id, id);

CREATE TABLE artifacts (
    run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    path   TEXT    NOT NULL,
    kind   TEXT    NOT NULL,
    size   INTEGER NOT NULL,
    sha256 TEXT    NOT NULL,
    ts     REAL    NOT NULL,
    PRIMARY KEY (run_id, path)
);

CREATE TABLE certificates (
    run_id  INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    idx     INTEGER NOT NULL,
    label   INTEGER NOT NULL,
    predict INTEGER NOT NULL,
    radius  REAL,
    correct INTEGER NOT NULL,
    count_a INTEGER,
    p_lower REAL,
    time    REAL    NOT NULL,
    PRIMARY KEY (run_id, idx)
);

-- The journal behind live streaming: every stored change a client may want to see, in one
-- monotonically increasing sequence (the SSE event id).
CREATE TABLE run_events (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id        INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    experiment_id INTEGER NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    ts            REAL    NOT NULL,
    type          TEXT    NOT NULL,
    data          TEXT    NOT NULL
);
CREATE INDEX run_events_run ON run_events(run_id, seq);
CREATE INDEX run_events_experiment ON run_events(experiment_id, seq);
