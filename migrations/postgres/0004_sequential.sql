-- Sequential certification (docs/certification.md): the estimation samples an image used, why
-- sampling stopped, and the upper bound on p_A. NULL for fixed-N CERTIFY and PREDICT rows.
-- Twin: ../sqlite/0004_sequential.sql.
ALTER TABLE certificates ADD COLUMN samples BIGINT;
ALTER TABLE certificates ADD COLUMN decision TEXT;
ALTER TABLE certificates ADD COLUMN p_upper DOUBLE PRECISION;
