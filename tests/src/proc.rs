//! The programs (the worker, the scheduler, the admin API) as real operating-system processes, for crash and shutdown tests: started with
//! the test world's configuration in its environment, its output captured to a file so tests
//! can read what it logged (and check that no secret appears there).

use std::{
    path::PathBuf,
    process::{Child, Stdio},
};

use crate::{bins, world::World};

/// A password that only appears in `DATABASE_URL` (trust auth ignores it), to check logs.
pub const DB_PASSWORD: &str = "db-s3cret-9f2c";

/// A worker process and the file holding its output.
pub struct WorkerProcess {
    /// The child.
    pub child: Child,
    /// stdout + stderr.
    pub log: PathBuf,
}

impl WorkerProcess {
    /// Sends a signal (`KILL`, `TERM`) to the process.
    pub fn signal(&self, sig: &str) {
        let _ = std::process::Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status();
    }

    /// What it printed so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `DATABASE_URL` of the world's database with [`DB_PASSWORD`] in it.
pub fn database_url_with_password(w: &World) -> String {
    let mut u = url::Url::parse(&w.db.url).expect("url");
    let _ = u.set_password(Some(DB_PASSWORD));
    u.to_string()
}

/// Starts `dashlight-worker` against the world, with `extra` environment variables.
pub fn spawn_worker(w: &World, tag: &str, extra: &[(&str, &str)]) -> WorkerProcess {
    spawn_program(w, "dashlight-worker", tag, extra)
}

/// Starts one of the programs (`dashlight-worker`, `dashlight-scheduler`,
/// `dashlight-admin-api`) against the world: its database (with [`DB_PASSWORD`]), peers and
/// templates in the environment, then `extra` (which may override any of them, e.g.
/// `DATABASE_URL`).
pub fn spawn_program(w: &World, program: &str, tag: &str, extra: &[(&str, &str)]) -> WorkerProcess {
    let log = std::env::temp_dir().join(format!("dashlight-{}-{tag}.log", w.db.name));
    let out = std::fs::File::create(&log).expect("log file");
    let c = &w.config;
    let sms = c.sms.as_ref().expect("sms configured");
    let push = c.push.as_ref().expect("push configured");
    let mut cmd = bins::command(program);
    cmd.env("DATABASE_URL", database_url_with_password(w))
        .env("SMTP_URL", &c.smtp.as_ref().expect("smtp configured").url)
        .env("SMS_API_BASE_URL", &sms.api_base_url)
        .env("SMS_ACCOUNT_SID", &sms.account_sid)
        .env("SMS_AUTH_TOKEN", &sms.auth_token)
        .env("SMS_FROM", &sms.from)
        .env("VAPID_PRIVATE_KEY", &push.vapid_private_key)
        .env("VAPID_SUBJECT", &push.vapid_subject)
        // The loopback push service.
        .env("PUSH_ALLOW_PRIVATE_ENDPOINTS", "true")
        .env("OUTBOX_DIR", &c.outbox_dir)
        .env("INVOICE_DIR", &c.invoice_dir)
        .env("ATTACHMENTS_DIR", &c.attachments_dir)
        .env("RETRY_BASE_DELAY", "200ms")
        .env("RETRY_MAX_DELAY", "2s")
        .env("POLL_INTERVAL", "100ms")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out);
    if let Some(dir) = &c.templates_dir {
        cmd.env("TEMPLATES_DIR", dir);
    }
    for (k, v) in extra {
        cmd.env(k, v);
    }
    WorkerProcess {
        child: cmd.spawn().unwrap_or_else(|e| panic!("start {program}: {e}")),
        log,
    }
}
