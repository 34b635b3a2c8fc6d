-- Devices: what a run asked for ("auto", "cpu", "gpu", "cuda:N") and where its latest attempt
-- ran ("cpu" or "cuda:N"; NULL until it first starts). Twin: ../sqlite/0002_run_device.sql.
ALTER TABLE runs ADD COLUMN device_request TEXT NOT NULL DEFAULT 'auto';
ALTER TABLE runs ADD COLUMN device TEXT;
