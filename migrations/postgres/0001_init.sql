-- CRT Lab schema (Postgres). Times are Unix seconds (DOUBLE PRECISION); JSON documents are TEXT.
-- The SQLite twin lives in ../sqlite/0001_init.sql: keep them in step.

CREATE TABLE experiments (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT    NOT NULL,
    description TEXT    NOT NULL DEFAULT '',
    tags        TEXT    NOT NULL DEFAULT '[]',
    created_at  DOUBLE PRECISION NOT NULL,
    updated_at  DOUBLE PRECISION NOT NULL
);

CREATE TABLE runs (
    id              BIGSERIAL PRIMARY KEY,
    experiment_id   BIGINT  NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    name            TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    config          TEXT    NOT NULL,
    resolved_config TEXT,
    -- copies of config fields, so runs can be filtered and indexed without JSON functions
    arch            TEXT,
    method          TEXT,
    dataset         TEXT,
    sigma           DOUBLE PRECISION,
    out_dir         TEXT    NOT NULL,
    created_at      DOUBLE PRECISION NOT NULL,
    queued_at       DOUBLE PRECISION NOT NULL,
    started_at      DOUBLE PRECISION,
    finished_at     DOUBLE PRECISION,
    wall_time_s     DOUBLE PRECISION NOT NULL DEFAULT 0,
    attempt         BIGINT  NOT NULL DEFAULT 0,
    pid             BIGINT,
    pgid            BIGINT,
    exit_code       BIGINT,
    exit_signal     BIGINT,
    error           TEXT,
    summary         TEXT,
    progress_phase  TEXT,
    progress_done   BIGINT,
    progress_total  BIGINT,
    progress_unit   TEXT
);
CREATE INDEX runs_experiment ON runs(experiment_id);
CREATE INDEX runs_status ON runs(status);

CREATE TABLE run_parents (
    run_id    BIGINT  NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    parent_id BIGINT  NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    position  BIGINT  NOT NULL,
    PRIMARY KEY (run_id, parent_id)
);
CREATE INDEX run_parents_parent ON run_parents(parent_id);

CREATE TABLE metrics (
    run_id BIGINT  NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key    TEXT    NOT NULL,
    step   BIGINT  NOT NULL,
    epoch  DOUBLE PRECISION,
    ts     DOUBLE PRECISION NOT NULL,
    value  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run_id, key, step)
);

CREATE TABLE metric_latest (
    run_id BIGINT  NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    key    TEXT    NOT NULL,
    step   BIGINT  NOT NULL,
    epoch  DOUBLE PRECISION,
    ts     DOUBLE PRECISION NOT NULL,
    value  DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run_id, key)
);

CREATE TABLE logs (
    id     BIGSERIAL PRIMARY KEY,
    run_id BIGINT  NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    ts     DOUBLE PRECISION NOT NULL,
    stream TEXT    NOT NULL,
    level  TEXT,
    line   TEXT    NOT NULL
);
CREATE INDEX logs_run ON logs(run_id, id);

CREATE TABLE artifacts (
    run_id BIGINT  NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    path   TEXT    NOT NULL,
    kind   TEXT    NOT NULL,
    size   BIGINT  NOT NULL,
    sha256 TEXT    NOT NULL,
    ts     DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run_id, path)
);

CREATE TABLE certificates (
    run_id  BIGINT  NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    idx     BIGINT  NOT NULL,
    label   BIGINT  NOT NULL,
    predict BIGINT  NOT NULL,
    radius  DOUBLE PRECISION,
    correct BIGINT  NOT NULL,
    count_a BIGINT,
    p_lower DOUBLE PRECISION,
    time    DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (run_id, idx)
);

-- The journal behind live streaming: every stored change a client may want to see, in one
-- monotonically increasing sequence (the SSE event id).
CREATE TABLE run_events (
    seq           BIGSERIAL PRIMARY KEY,
    run_id        BIGINT  NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    experiment_id BIGINT  NOT NULL REFERENCES experiments(id) ON DELETE CASCADE,
    ts            DOUBLE PRECISION NOT NULL,
    type          TEXT    NOT NULL,
    data          TEXT    NOT NULL
);
CREATE INDEX run_events_run ON run_events(run_id, seq);
CREATE INDEX run_events_experiment ON run_events(experiment_id, seq);
