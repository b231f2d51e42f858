//! The project's worker as real processes: the release `dashlight-worker` next to the bench
//! binary in the same target directory, started with the environment an operator would give it
//! (database, SMTP, SMS API, VAPID key, templates, concurrency, poll interval), logs to files
//! under `target/bench-logs/`, stopped with SIGTERM (graceful: in-flight sends finish).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, bail};
use sqlx::PgConnection;
use tokio::process::{Child, Command};

use crate::{pg::BenchDb, sinks::Sinks, world::Keys};

/// How the worker processes are configured.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Processes.
    pub processes: usize,
    /// `WORKER_CONCURRENCY`.
    pub concurrency: usize,
    /// `WORKER_BATCH_SIZE`.
    pub batch: usize,
    /// `POLL_INTERVAL` in milliseconds.
    pub poll_ms: u64,
    /// `sslmode` added to the workers' `DATABASE_URL` (none: the driver's default, `prefer`).
    pub sslmode: Option<String>,
    /// A program (and its arguments) the workers run under, e.g. `valgrind --tool=callgrind`.
    pub wrapper: Vec<String>,
    /// `--pooler`: the port of the PgBouncer (transaction mode) the workers go through, with
    /// `DATABASE_POOLER=transaction` and the direct URL as `DATABASE_DIRECT_URL`.
    pub pooler_port: Option<u16>,
}

impl WorkerSettings {
    /// The `DATABASE_URL` the workers get for database `url`.
    pub fn database_url(&self, url: &str) -> String {
        match &self.sslmode {
            Some(mode) => format!("{url}?sslmode={mode}"),
            None => url.to_owned(),
        }
    }

    /// The workers' `DATABASE_URL`: through the pooler with `--pooler`, else direct.
    pub fn worker_database_url(&self, url: &str) -> String {
        let direct = self.database_url(url);
        match self.pooler_port {
            Some(port) => {
                let mut u = url::Url::parse(&direct).expect("a database URL");
                u.set_host(Some("127.0.0.1")).expect("host");
                u.set_port(Some(port)).expect("port");
                u.to_string()
            }
            None => direct,
        }
    }
}

/// The workspace root (`bench/..`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The release worker binary beside this executable, and a warning when a source file of the
/// worker or core crate is newer than it (the binary would not measure the tree as it is).
pub fn worker_binary() -> anyhow::Result<(PathBuf, Option<String>)> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("the bench executable has no folder")?;
    let bin = dir.join("dashlight-worker");
    if !bin.exists() {
        bail!(
            "{} does not exist: build it first with `cargo build --release -p dashlight-worker -p dashlight-bench`",
            bin.display()
        );
    }
    let built = std::fs::metadata(&bin)?.modified()?;
    let root = repo_root();
    let newest = ["worker/src", "core/src", "templates"]
        .iter()
        .filter_map(|d| newest_mtime(&root.join(d)))
        .max();
    let warning = newest.filter(|t| *t > built).map(|_| {
        format!(
            "{} is older than the worker/core sources: rebuild it (`cargo build --release -p dashlight-worker`)",
            bin.display()
        )
    });
    Ok((bin, warning))
}

fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_mtime(&path)
        } else {
            entry.metadata().ok().and_then(|m| m.modified().ok())
        };
        newest = newest.max(t);
    }
    newest
}

/// Running worker processes.
pub struct Workers {
    children: Vec<Child>,
    /// Their pids.
    pub pids: Vec<u32>,
    /// Their log files.
    pub logs: Vec<PathBuf>,
}

impl Workers {
    /// Starts the processes and waits until each has registered both its apalis workers.
    pub async fn start(
        bin: &Path,
        db: &BenchDb,
        conn: &mut PgConnection,
        sinks: &Sinks,
        keys: &Keys,
        s: &WorkerSettings,
        label: &str,
    ) -> anyhow::Result<Workers> {
        let log_dir = repo_root().join("target/bench-logs");
        std::fs::create_dir_all(&log_dir)?;
        let outbox = std::env::temp_dir().join(format!("dashlight-bench-outbox-{}", std::process::id()));
        let mut children = Vec::new();
        let mut pids = Vec::new();
        let mut logs = Vec::new();
        for i in 0..s.processes {
            let log = log_dir.join(format!("{label}-worker{i}.log"));
            let file = std::fs::File::create(&log)?;
            let mut command = match s.wrapper.split_first() {
                Some((program, args)) => {
                    let mut c = Command::new(program);
                    c.args(args).arg(bin);
                    c
                }
                None => Command::new(bin),
            };
            let child = command
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("DATABASE_URL", s.worker_database_url(&db.url))
                .env("SMTP_URL", sinks.smtp_url())
                .env("SMS_API_BASE_URL", sinks.http_base())
                .env("SMS_ACCOUNT_SID", "ACbench")
                .env("SMS_AUTH_TOKEN", "bench-token")
                .env("SMS_FROM", "+447700900000")
                .env("VAPID_PRIVATE_KEY", &keys.vapid_private_key)
                .env("VAPID_SUBJECT", "mailto:ops@bench.test")
                // The push sink is on loopback.
                .env("PUSH_ALLOW_PRIVATE_ENDPOINTS", "true")
                .env("TEMPLATES_DIR", repo_root().join("templates"))
                .env("OUTBOX_DIR", &outbox)
                .env("INVOICE_DIR", &outbox)
                .env("WORKER_CONCURRENCY", s.concurrency.to_string())
                .env("WORKER_BATCH_SIZE", s.batch.to_string())
                .env("POLL_INTERVAL", format!("{}ms", s.poll_ms))
                .envs(
                    s.pooler_port
                        .map(|_| {
                            [
                                ("DATABASE_POOLER", "transaction".to_owned()),
                                ("DATABASE_DIRECT_URL", s.database_url(&db.url)),
                            ]
                        })
                        .into_iter()
                        .flatten(),
                )
                .env("RUST_LOG", std::env::var("BENCH_WORKER_LOG").unwrap_or_else(|_| "warn".into()))
                .stdin(Stdio::null())
                .stdout(file.try_clone()?)
                .stderr(file)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {}", bin.display()))?;
            pids.push(child.id().context("worker exited at once")?);
            children.push(child);
            logs.push(log);
        }
        let mut w = Workers { children, pids, logs };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut ready = 0;
            for pid in &w.pids {
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM apalis.workers WHERE id LIKE '%-worker-' || $1 || '-%'")
                    .bind(pid.to_string())
                    .fetch_one(&mut *conn)
                    .await?;
                if n >= 2 {
                    ready += 1;
                }
            }
            if ready == w.pids.len() {
                return Ok(w);
            }
            for (c, log) in w.children.iter_mut().zip(&w.logs) {
                if let Some(status) = c.try_wait()? {
                    bail!(
                        "a worker exited during start-up ({status}); its log {}:\n{}",
                        log.display(),
                        tail(log)
                    );
                }
            }
            if Instant::now() > deadline {
                bail!("the workers did not register within 60 s; see {}", w.logs[0].display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Peak resident set (`VmHWM`, KiB) of each process so far.
    pub fn peak_rss_kib(&self) -> Vec<u64> {
        self.pids.iter().map(|p| proc_status_kib(*p, "VmHWM:").unwrap_or(0)).collect()
    }

    /// CPU time (user + system) each process has used, in seconds.
    pub fn cpu_seconds(&self) -> f64 {
        self.pids.iter().map(|p| cpu_seconds(*p)).sum()
    }

    /// SIGTERM, then waits up to 45 s for a clean exit (then kills). Returns the number of
    /// `WARN`/`ERROR` lines the processes logged.
    pub async fn stop(mut self) -> anyhow::Result<usize> {
        for pid in &self.pids {
            let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status().await;
        }
        for c in &mut self.children {
            match tokio::time::timeout(Duration::from_secs(45), c.wait()).await {
                Ok(r) => {
                    r?;
                }
                Err(_) => {
                    tracing::warn!("a worker did not stop within 45 s: killing it");
                    c.kill().await?;
                }
            }
        }
        Ok(self
            .logs
            .iter()
            .map(|l| {
                std::fs::read_to_string(l)
                    .unwrap_or_default()
                    .lines()
                    .filter(|x| x.contains("WARN") || x.contains("ERROR"))
                    .count()
            })
            .sum())
    }
}

/// The last lines of a log file.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A `kB` line of `/proc/<pid>/status`.
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of a process (0 when it is gone).
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let Some(rest) = s.rsplit_once(')').map(|x| x.1) else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// CPU seconds used by every process of the machine since boot (from `/proc/stat`): (busy, total).
pub fn machine_cpu() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().next() else { return (0.0, 0.0) };
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    ((total - idle) / 100.0, total / 100.0)
}
