-- Files to delete from disk. A request is written in the transaction that makes a file unneeded
-- (an erasure records its student's lesson attachments here before unlinking them from their
-- lessons) and deleted once the file is gone, so a crash between the commit and the unlink
-- loses nothing: the next try (the admin API right after the erasure, the worker's retention
-- task on every run) deletes the file. `path` is relative to ATTACHMENTS_DIR (or absolute
-- inside it). A request whose file could not be removed stays, with its attempts and the last
-- error (the OS's message, without the path). Written only by core/src/files.rs.
CREATE TABLE file_deletions (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    path         text NOT NULL CHECK (path <> ''),
    requested_at timestamptz NOT NULL DEFAULT now(),
    attempts     integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error   text CHECK (length(last_error) <= 2000)
);
