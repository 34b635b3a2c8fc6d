-- Runs that outlive the server. Twin (with the column meanings): ../sqlite/0003_launch.sql.
ALTER TABLE runs ADD COLUMN backend TEXT NOT NULL DEFAULT 'local';
ALTER TABLE runs ADD COLUMN resources TEXT;
ALTER TABLE runs ADD COLUMN handle TEXT;
ALTER TABLE runs ADD COLUMN backend_state TEXT;
ALTER TABLE runs ADD COLUMN events_offset BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN stderr_offset BIGINT NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN stop_requested_at DOUBLE PRECISION;
ALTER TABLE runs ADD COLUMN terminal TEXT;

-- A NULL metric value is NaN in both databases (one rule for both; Postgres could store NaN).
ALTER TABLE metrics ALTER COLUMN value DROP NOT NULL;
ALTER TABLE metric_latest ALTER COLUMN value DROP NOT NULL;
