-- apalis.jobs carries two exact duplicates of other indexes: apalis-postgres 1.0's first
-- migration created `unique_job_id` (UNIQUE (id), the primary key again) and `lidx` (lock_by),
-- and its later `streamline_indices` migration created `idx_apalis_jobs_lock_by` without
-- dropping `lidx`. A job's fetch and its acknowledgement are each an update that is not HOT, so
-- every index takes a new entry twice per job: these two did nothing but cost that (BENCHMARKS.md,
-- scenario 1). No query names them; ON CONFLICT (id) is served by the primary key.
DROP INDEX IF EXISTS apalis.unique_job_id;
DROP INDEX IF EXISTS apalis.lidx;
