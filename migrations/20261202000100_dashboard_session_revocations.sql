-- Dashboard sessions ended by signing out (issue 21, "signing out revokes the session").
--
-- A dashboard session cookie is stateless: `v1.<expiry>.<mac>`, an HMAC of its expiry keyed with
-- ADMIN_API_TOKEN (admin-api/src/dashboard/session.rs). Clearing it in the browser is not enough:
-- a copy of the cookie (a shared machine, a proxy log) would keep working until it expires. On
-- sign-out the admin API records the SHA-256 of the cookie's value here, and refuses that value
-- from then on. Rows are only needed until the cookie would have expired anyway; sign-out deletes
-- the expired ones.
CREATE TABLE dashboard_revoked_sessions (
    session_digest bytea PRIMARY KEY CHECK (octet_length(session_digest) = 32),
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX dashboard_revoked_sessions_expires_at ON dashboard_revoked_sessions (expires_at);
