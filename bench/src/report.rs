//! Medians across runs and BENCHMARKS.md. The file's generated part (machine, command, table,
//! details) is rewritten on every full run; everything from the `<!-- bench:analysis -->`
//! marker on (the hand-written "What limits us") is kept as it is.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use serde::Serialize;

use crate::{
    burst::BurstRun,
    graphile::{GraphileDrain, GraphileRun},
    raw::{DrainResult, Variant},
    steady::{SteadyRun, SteadySuite},
};

/// The marker after which BENCHMARKS.md is written by hand.
pub const ANALYSIS_MARKER: &str = "<!-- bench:analysis -->";

/// Sizes and settings of an invocation.
#[derive(Debug, Clone, Serialize)]
pub struct Sizes {
    /// Runs per scenario.
    pub runs: usize,
    /// Scenario 1 jobs.
    pub raw_jobs: u64,
    /// Scenario 2 reminders.
    pub burst: u64,
    /// Scenario 3/4 rate.
    pub rate: u64,
    /// Scenario 3/4 seconds.
    pub steady_seconds: u64,
    /// Scenario 4 past bookings.
    pub history_bookings: i64,
    /// Scenario 4 past deliveries.
    pub history_deliveries: i64,
    /// --quick.
    pub quick: bool,
    /// Runs of scenarios 3 and 4.
    pub steady_runs: usize,
    /// Cut-off of a steady run after its last reminder was due, s.
    pub grace_seconds: u64,
    /// Worker processes.
    pub workers: usize,
    /// WORKER_CONCURRENCY.
    pub concurrency: usize,
    /// WORKER_BATCH_SIZE.
    pub batch: usize,
    /// POLL_INTERVAL, ms.
    pub poll_ms: u64,
}

/// The machine, read at start.
#[derive(Debug, Clone)]
pub struct Machine {
    /// `nproc`.
    pub cores: usize,
    /// MemTotal, GiB.
    pub memory_gib: f64,
    /// CPU model.
    pub cpu: String,
    /// `SELECT version()`.
    pub postgres: String,
    /// Server settings that matter here.
    pub pg_settings: String,
    /// /proc/loadavg at start.
    pub load: String,
    /// Commit and whether the tree had changes.
    pub commit: String,
    /// When.
    pub date: String,
}

impl Machine {
    /// Reads it.
    pub async fn read() -> anyhow::Result<Machine> {
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: f64 = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0.0);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("?")
            .trim()
            .to_owned();
        let cores = command("nproc", &[])
            .trim()
            .parse()
            .unwrap_or_else(|_| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
        let mut conn = crate::pg::admin().await?;
        let postgres: String = sqlx::query_scalar("SELECT version()").fetch_one(&mut conn).await?;
        let settings: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, setting || coalesce(unit, '') FROM pg_settings
             WHERE name IN ('shared_buffers', 'synchronous_commit', 'fsync', 'autovacuum', 'max_connections', 'shared_preload_libraries', 'wal_level')
             ORDER BY name",
        )
        .fetch_all(&mut conn)
        .await?;
        let pg_settings = settings
            .iter()
            .map(|(k, v)| format!("{k}={}", if v.is_empty() { "''" } else { v }))
            .collect::<Vec<_>>()
            .join(", ");
        let rev = command(
            "git",
            &["-C", concat!(env!("CARGO_MANIFEST_DIR"), "/.."), "rev-parse", "--short", "HEAD"],
        );
        let dirty = command("git", &["-C", concat!(env!("CARGO_MANIFEST_DIR"), "/.."), "status", "--porcelain"])
            .lines()
            .count();
        Ok(Machine {
            cores,
            memory_gib: kib / 1024.0 / 1024.0,
            cpu,
            postgres,
            pg_settings,
            load: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            commit: format!(
                "{} ({})",
                rev.trim(),
                if dirty == 0 {
                    "clean tree".to_owned()
                } else {
                    format!("{dirty} uncommitted paths")
                }
            ),
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        })
    }

    /// One line.
    pub fn summary(&self) -> String {
        format!(
            "{} cores ({}), {:.1} GiB, {}; load {}",
            self.cores, self.cpu, self.memory_gib, self.postgres, self.load
        )
    }
}

fn command(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The median (NaN for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    if v.len() % 2 == 1 { v[m] } else { (v[m - 1] + v[m]) / 2.0 }
}

/// Scenario 1, medians.
#[derive(Debug, Clone, Serialize)]
pub struct RawSummary {
    /// Jobs/s per variant (median).
    pub jobs_per_second: BTreeMap<String, f64>,
    /// Jobs/s per variant, every run.
    pub per_run: BTreeMap<String, Vec<f64>>,
    /// Transactions per job per variant (median).
    pub transactions_per_job: BTreeMap<String, f64>,
    /// Sessions by state / wait event of the last run, per variant.
    #[serde(skip)]
    pub sessions: BTreeMap<String, BTreeMap<String, f64>>,
    /// project / default.
    pub ratio_project_to_default: f64,
    /// Every job of every run ended Done.
    pub all_done: bool,
    /// The same drain run by graphile-worker, or why it was not.
    pub graphile: GraphileSummary,
}

/// graphile-worker's side of scenario 1.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphileSummary {
    /// Not run, and why (no `node`/`npm`, or `--no-graphile`).
    Skipped(String),
    /// Run once per bench run, beside the project's drain.
    Measured {
        /// graphile-worker's version.
        version: String,
        /// Jobs/s of each bench run: the best of its concurrencies.
        per_run: Vec<f64>,
        /// The concurrency of each run's best.
        best_concurrency: Vec<u32>,
        /// Every run, every concurrency: (concurrency, jobs/s).
        every: Vec<Vec<(u32, f64)>>,
        /// Median of `per_run`.
        jobs_per_second: f64,
        /// The project's median / graphile's median.
        ratio_project_to_graphile: f64,
        /// The project's jobs/s over graphile's best, run by run (the figure that survives a
        /// machine whose speed moves between runs).
        ratio_per_run: Vec<f64>,
    },
}

impl GraphileSummary {
    /// From the drains of each run, beside the project's runs (`project_per_run`, in the same order).
    pub fn new(drains: &[GraphileDrain], project_per_run: &[f64], project_median: f64) -> GraphileSummary {
        let Some(first) = drains.first() else {
            return GraphileSummary::Skipped("no run".into());
        };
        let best: Vec<&GraphileRun> = drains.iter().filter_map(|d| d.best.as_ref()).collect();
        let per_run: Vec<f64> = best.iter().map(|b| b.per_second).collect();
        let jobs_per_second = median(per_run.clone());
        GraphileSummary::Measured {
            version: first.version.clone(),
            best_concurrency: best.iter().map(|b| b.concurrency).collect(),
            every: drains
                .iter()
                .map(|d| d.runs.iter().map(|r| (r.concurrency, r.per_second)).collect())
                .collect(),
            ratio_per_run: project_per_run.iter().zip(&per_run).map(|(p, g)| p / g).collect(),
            ratio_project_to_graphile: project_median / jobs_per_second,
            per_run,
            jobs_per_second,
        }
    }
}

impl RawSummary {
    /// From the runs.
    pub fn new(runs: &[(Variant, DrainResult)], graphile: Result<&[GraphileDrain], &str>) -> RawSummary {
        let mut per_run: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut tx: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        let mut sessions = BTreeMap::new();
        for (v, r) in runs {
            per_run.entry(v.as_str().to_owned()).or_default().push(r.per_second);
            tx.entry(v.as_str().to_owned()).or_default().push(r.transactions_per_job);
            sessions.insert(v.as_str().to_owned(), r.sessions.clone());
        }
        let transactions_per_job = tx.into_iter().map(|(k, v)| (k, median(v))).collect();
        let jobs_per_second: BTreeMap<String, f64> = per_run.iter().map(|(k, v)| (k.clone(), median(v.clone()))).collect();
        let ratio =
            jobs_per_second.get("project").copied().unwrap_or(f64::NAN) / jobs_per_second.get("default").copied().unwrap_or(f64::NAN);
        let graphile = match graphile {
            Ok(drains) => GraphileSummary::new(
                drains,
                per_run.get("project").map(Vec::as_slice).unwrap_or_default(),
                jobs_per_second.get("project").copied().unwrap_or(f64::NAN),
            ),
            Err(why) => GraphileSummary::Skipped(why.to_owned()),
        };
        RawSummary {
            graphile,
            jobs_per_second,
            per_run,
            transactions_per_job,
            sessions,
            ratio_project_to_default: ratio,
            all_done: runs.iter().all(|(_, r)| r.all_done),
        }
    }
}

/// Scenarios 2 and 5, medians.
#[derive(Debug, Clone, Serialize)]
pub struct BurstSummary {
    /// Notifications/s.
    pub per_second: f64,
    /// Every reminder of every run recorded `sent`, and the sinks got as many messages.
    pub all_recorded: bool,
    /// Peak RSS of the largest worker process, MiB.
    pub peak_rss_mib: f64,
    /// Transactions per notification.
    pub transactions_per_notification: f64,
    /// WAL bytes per notification (cluster-wide).
    pub wal_bytes_per_notification: f64,
    /// CPU milliseconds per notification: worker processes.
    pub worker_cpu_ms_per_notification: f64,
    /// CPU milliseconds per notification: the bench database's Postgres backends.
    pub postgres_cpu_ms_per_notification: f64,
    /// Row writes (inserts + updates + deletes, every table) per notification.
    pub row_writes_per_notification: f64,
}

impl BurstSummary {
    /// From the runs.
    pub fn new(runs: &[BurstRun]) -> BurstSummary {
        BurstSummary {
            per_second: median(runs.iter().map(|r| r.per_second).collect()),
            all_recorded: runs.iter().all(|r| {
                let (e, s, p) = r.sink_counts;
                r.recorded == r.notifications && r.not_sent == 0 && e + s + p == r.notifications
            }),
            peak_rss_mib: median(runs.iter().map(|r| r.peak_rss_mib.iter().copied().fold(0.0, f64::max)).collect()),
            transactions_per_notification: median(runs.iter().map(|r| r.transactions_per_notification).collect()),
            wal_bytes_per_notification: median(runs.iter().map(|r| r.wal_bytes_per_notification).collect()),
            worker_cpu_ms_per_notification: median(runs.iter().map(|r| cpu_ms(r, "worker processes")).collect()),
            postgres_cpu_ms_per_notification: median(runs.iter().map(|r| cpu_ms(r, "postgres backends")).collect()),
            row_writes_per_notification: median(runs.iter().map(|r| r.row_writes_per_notification()).collect()),
        }
    }
}

fn cpu_ms(r: &BurstRun, what: &str) -> f64 {
    r.cpu_seconds.get(what).copied().unwrap_or(f64::NAN) * 1000.0 / r.recorded.max(1) as f64
}

/// Medians of a set of steady runs.
#[derive(Debug, Clone, Serialize)]
pub struct SteadyAgg {
    /// Reminders due per run.
    pub notifications: u64,
    /// Fewest sent by the cut-off in a run.
    pub delivered: u64,
    /// Lateness p50, ms.
    pub p50_ms: f64,
    /// p99, ms.
    pub p99_ms: f64,
    /// max, ms.
    pub max_ms: f64,
    /// The sweep's due-scan: server execution time mid-run, ms (median over runs × 4 points).
    pub scan_ms: f64,
    /// Real `sweep_overdue` wall time before the runs' first reminder was due, ms.
    pub sweep_before_ms: f64,
    /// Real `sweep_overdue` wall time after the runs, ms.
    pub sweep_after_ms: f64,
    /// The due-scan's plan of the last run at 60 %.
    #[serde(skip)]
    pub explain: String,
    /// The whole statement's plan after the last run.
    #[serde(skip)]
    pub explain_after: String,
    /// The worker's per-notification status update, mid-run of the last run.
    #[serde(skip)]
    pub explain_finish: String,
}

impl SteadyAgg {
    fn new(runs: &[SteadyRun]) -> SteadyAgg {
        SteadyAgg {
            notifications: runs.first().map(|r| r.notifications).unwrap_or(0),
            delivered: runs.iter().map(|r| r.delivered).min().unwrap_or(0),
            p50_ms: median(runs.iter().map(|r| r.p50_ms).collect()),
            p99_ms: median(runs.iter().map(|r| r.p99_ms).collect()),
            max_ms: median(runs.iter().map(|r| r.max_ms).collect()),
            scan_ms: median(runs.iter().flat_map(|r| r.scan_mid_ms.clone()).collect()),
            sweep_before_ms: median(runs.iter().flat_map(|r| r.sweep_before_ms.clone()).collect()),
            sweep_after_ms: median(runs.iter().flat_map(|r| r.sweep_after_ms.clone()).collect()),
            explain: runs.last().map(|r| r.explain_mid.clone()).unwrap_or_default(),
            explain_after: runs.last().map(|r| r.explain_after.clone()).unwrap_or_default(),
            explain_finish: runs.last().map(|r| r.explain_finish.clone()).unwrap_or_default(),
        }
    }

    /// "≥ " when some reminders were not sent by the cut-off (the figures are lower bounds).
    pub fn bound(&self) -> &'static str {
        if self.delivered < self.notifications { "≥ " } else { "" }
    }
}

/// Scenarios 3 and 4.
#[derive(Debug, Clone, Serialize)]
pub struct SteadySummary {
    /// Empty history.
    pub empty: SteadyAgg,
    /// With history.
    pub history: Option<SteadyAgg>,
    /// p99 with history / p99 without.
    pub p99_ratio: f64,
    /// Mid-run scan time with history / without.
    pub scan_ratio: f64,
    /// Real sweep wall time (before and after the runs) with history / without.
    pub sweep_ratio: f64,
}

impl SteadySummary {
    /// From the suite.
    pub fn new(s: &SteadySuite) -> SteadySummary {
        let empty = SteadyAgg::new(&s.empty);
        let history = (!s.history.is_empty()).then(|| SteadyAgg::new(&s.history));
        let sweep = |runs: &[SteadyRun]| {
            median(
                runs.iter()
                    .flat_map(|r| r.sweep_before_ms.iter().chain(&r.sweep_after_ms).copied())
                    .collect(),
            )
        };
        let (p99_ratio, scan_ratio, sweep_ratio) = match &history {
            Some(h) => (
                h.p99_ms / empty.p99_ms,
                h.scan_ms / empty.scan_ms,
                sweep(&s.history) / sweep(&s.empty),
            ),
            None => (f64::NAN, f64::NAN, f64::NAN),
        };
        SteadySummary {
            empty,
            history,
            p99_ratio,
            scan_ratio,
            sweep_ratio,
        }
    }
}

/// Everything an invocation measured.
#[derive(Debug, Default)]
pub struct Results {
    /// Scenario 1.
    pub raw: Option<RawSummary>,
    /// Scenarios 2 and 5.
    pub burst: Option<(BurstSummary, Vec<BurstRun>)>,
    /// Scenarios 3 and 4.
    pub steady: Option<(SteadySummary, SteadySuite)>,
    /// The worker binary was older than its sources.
    pub stale_binary: Option<String>,
    /// Wall time of the invocation.
    pub elapsed_seconds: f64,
}

impl Results {
    /// The headline figures of `bench all` (the targets' table), as JSON.
    pub fn summary_json(&self) -> serde_json::Value {
        let mut o = serde_json::Map::new();
        if let Some(raw) = &self.raw {
            o.insert(
                "raw_project_jobs_per_second".into(),
                raw.jobs_per_second.get("project").copied().into(),
            );
            if let GraphileSummary::Measured {
                version,
                jobs_per_second,
                ratio_project_to_graphile,
                ..
            } = &raw.graphile
            {
                o.insert("graphile_version".into(), version.clone().into());
                o.insert("raw_graphile_jobs_per_second".into(), (*jobs_per_second).into());
                o.insert("raw_ratio_project_to_graphile".into(), (*ratio_project_to_graphile).into());
            }
        }
        if let Some((b, _)) = &self.burst {
            o.insert("burst_per_second".into(), b.per_second.into());
            o.insert("burst_all_recorded".into(), b.all_recorded.into());
            o.insert("row_writes_per_notification".into(), b.row_writes_per_notification.into());
            o.insert("worker_cpu_ms_per_notification".into(), b.worker_cpu_ms_per_notification.into());
            o.insert("postgres_cpu_ms_per_notification".into(), b.postgres_cpu_ms_per_notification.into());
            o.insert("peak_rss_mib".into(), b.peak_rss_mib.into());
        }
        if let Some((st, _)) = &self.steady {
            o.insert("steady_p99_ms".into(), st.empty.p99_ms.into());
            if st.history.is_some() {
                o.insert("history_p99_ratio".into(), st.p99_ratio.into());
            }
        }
        serde_json::Value::Object(o)
    }
}

/// The headline figures of `bench all` (the targets' table), a line each.
pub fn summary(r: &Results) -> String {
    let mut o = String::new();
    if let Some(raw) = &r.raw {
        let p = raw.jobs_per_second.get("project").copied().unwrap_or(f64::NAN);
        match &raw.graphile {
            GraphileSummary::Measured {
                version,
                jobs_per_second,
                ratio_project_to_graphile,
                ..
            } => o.push_str(&format!(
                "raw drain: project {} jobs/s, graphile-worker {version} {} jobs/s: ratio {:.2}× (target ≥ 1.5×)\n",
                n0(p),
                n0(*jobs_per_second),
                ratio_project_to_graphile
            )),
            GraphileSummary::Skipped(why) => o.push_str(&format!("raw drain: project {} jobs/s; graphile-worker not run: {why}\n", n0(p))),
        }
    }
    if let Some((b, _)) = &r.burst {
        o.push_str(&format!(
            "burst: {} notifications/s{}; {:.2} row writes per notification (target ≤ 5); CPU worker {:.3} + Postgres {:.3} = {:.3} ms per notification (target ≤ 0.2); peak RSS {:.1} MiB\n",
            n0(b.per_second),
            if b.all_recorded { ", every one recorded" } else { ", NOT all recorded" },
            b.row_writes_per_notification,
            b.worker_cpu_ms_per_notification,
            b.postgres_cpu_ms_per_notification,
            b.worker_cpu_ms_per_notification + b.postgres_cpu_ms_per_notification,
            b.peak_rss_mib
        ));
    }
    if let Some((st, _)) = &r.steady {
        o.push_str(&format!("steady: p99 {} ms", n0(st.empty.p99_ms)));
        if st.history.is_some() {
            o.push_str(&format!(", history ratio {:.2}", st.p99_ratio));
        }
        o.push('\n');
    }
    o
}

fn n0(x: f64) -> String {
    if x.is_nan() {
        return "–".into();
    }
    let s = format!("{:.0}", x);
    let (neg, digits) = s.strip_prefix('-').map(|d| (true, d)).unwrap_or((false, &s));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if neg { format!("-{out}") } else { out }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "**missed**" }
}

/// Writes BENCHMARKS.md at `path`, keeping its hand-written analysis.
pub fn write(path: &Path, m: &Machine, s: &Sizes, r: &Results) -> anyhow::Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let analysis = match old.find(ANALYSIS_MARKER) {
        Some(i) => old[i..].to_owned(),
        None => format!("{ANALYSIS_MARKER}\n\n## What limits us\n\n(To be written from the profiles: see the details above.)\n"),
    };
    let mut o = String::new();
    let w = &mut o;
    writeln!(w, "# Benchmarks")?;
    writeln!(w)?;
    writeln!(
        w,
        "<!-- Generated by `cargo run --release -p dashlight-bench -- all`: everything above the analysis marker is rewritten on each full run. -->"
    )?;
    writeln!(w)?;
    writeln!(w, "The benchmark (`bench all`), measured {} at commit {}.", m.date, m.commit)?;
    writeln!(w)?;
    writeln!(w, "## Machine")?;
    writeln!(w)?;
    writeln!(
        w,
        "- {} cores (`nproc`), {}; {:.1} GiB memory (`/proc/meminfo`)",
        m.cores, m.cpu, m.memory_gib
    )?;
    writeln!(w, "- {}", m.postgres)?;
    writeln!(w, "- server settings: {}", m.pg_settings)?;
    writeln!(
        w,
        "- load average when the run started: {} (the machine is shared: other engineers compile on it, so figures move by ±30 % between runs)",
        m.load
    )?;
    writeln!(w, "- the whole run took {:.0} s", r.elapsed_seconds)?;
    if let Some(stale) = &r.stale_binary {
        writeln!(w, "- **warning:** {stale}")?;
    }
    writeln!(w)?;
    writeln!(w, "## Command")?;
    writeln!(w)?;
    writeln!(w, "```sh")?;
    writeln!(w, "cargo build --release -p dashlight-worker -p dashlight-bench")?;
    writeln!(
        w,
        "cargo run --release -p dashlight-bench -- all            # this file: {} run(s) of scenarios 1-2, {} of 3-4; medians",
        s.runs, s.steady_runs
    )?;
    writeln!(
        w,
        "cargo run --release -p dashlight-bench -- all --quick    # before a change: reduced sizes, 1 run, < 1 min"
    )?;
    writeln!(
        w,
        "cargo run --release -p dashlight-bench -- burst --perf target/burst.perf   # one scenario, with a perf profile"
    )?;
    writeln!(w, "```")?;
    writeln!(w)?;
    writeln!(
        w,
        "Worker processes: {} × the release `dashlight-worker` with WORKER_CONCURRENCY={}, WORKER_BATCH_SIZE={} and POLL_INTERVAL={}ms (the defaults of \
         `core/src/config/`), RUST_LOG=warn, SMTP/SMS/push pointed at the bench's loopback sinks (tokio SMTP sink, axum HTTP sink).",
        s.workers, s.concurrency, s.batch, s.poll_ms
    )?;
    writeln!(w)?;
    writeln!(
        w,
        "## Results (median of {} run(s); scenarios 3-4: {} run(s))",
        s.runs, s.steady_runs
    )?;
    writeln!(w)?;
    writeln!(w, "| # | figure | target | measured | |")?;
    writeln!(w, "|---|---|---|---|---|")?;
    if let Some(raw) = &r.raw {
        let p = raw.jobs_per_second.get("project").copied().unwrap_or(f64::NAN);
        let d = raw.jobs_per_second.get("default").copied().unwrap_or(f64::NAN);
        let t = raw.jobs_per_second.get("tuned").copied().unwrap_or(f64::NAN);
        writeln!(
            w,
            "| 1 | raw queue drain, project configuration ({} no-op jobs) | ≥ 40,000 jobs/s | {} jobs/s | {} |",
            n0(s.raw_jobs as f64),
            n0(p),
            verdict(p >= 40_000.0)
        )?;
        writeln!(
            w,
            "| 1 | same jobs, apalis-postgres default `Config`, one worker | (≈ 1,500 measured before this project) | {} jobs/s | |",
            n0(d)
        )?;
        writeln!(w, "| 1 | ratio project / default | | {:.2} | |", raw.ratio_project_to_default)?;
        writeln!(
            w,
            "| 1 | reference: default `Config` + `batch_size(1000)` + `lock_tasks(false)` | (≈ 17,000 in the notes) | {} jobs/s | |",
            n0(t)
        )?;
        match &raw.graphile {
            GraphileSummary::Measured {
                version,
                jobs_per_second,
                ratio_project_to_graphile,
                ..
            } => writeln!(
                w,
                "| 1 | against graphile-worker {version} (same jobs and Postgres, `localQueue` 500, best of concurrency 10/24): ratio project / graphile \
                 | ≥ 1.5× | {:.2}× ({} vs {} jobs/s) | {} |",
                ratio_project_to_graphile,
                n0(p),
                n0(*jobs_per_second),
                verdict(*ratio_project_to_graphile >= 1.5)
            )?,
            GraphileSummary::Skipped(why) => writeln!(w, "| 1 | against graphile-worker | ≥ 1.5× | not run: {why} | |")?,
        }
    }
    if let Some((b, _)) = &r.burst {
        writeln!(
            w,
            "| 2 | end-to-end burst ({} reminders, 60/30/10 push/email/SMS) | ≥ 10,000 notifications/s, every one recorded | {} notifications/s, {} | {} |",
            n0(s.burst as f64),
            n0(b.per_second),
            if b.all_recorded {
                "every one recorded"
            } else {
                "**not all recorded**"
            },
            verdict(b.per_second >= 10_000.0 && b.all_recorded)
        )?;
    }
    if let Some((b, _)) = &r.burst {
        writeln!(
            w,
            "| 2 | Postgres row writes (inserts + updates + deletes, every table) per sent notification | ≤ 5 | {:.2} | {} |",
            b.row_writes_per_notification,
            verdict(b.row_writes_per_notification <= 5.0)
        )?;
        let cpu = b.worker_cpu_ms_per_notification + b.postgres_cpu_ms_per_notification;
        writeln!(
            w,
            "| 2 | CPU per notification, worker + Postgres backends | ≤ 0.2 ms | {:.3} + {:.3} = {:.3} ms | {} |",
            b.worker_cpu_ms_per_notification,
            b.postgres_cpu_ms_per_notification,
            cpu,
            verdict(cpu <= 0.2)
        )?;
    }
    if let Some((st, suite)) = &r.steady {
        let e = &st.empty;
        writeln!(
            w,
            "| 3 | steady lateness at {}/s for {} s (p50 / p99 / max) | p99 ≤ 250 ms, max ≤ 1 s | {b}{} / {b}{} / {b}{} ms{} | {} |",
            n0(s.rate as f64),
            s.steady_seconds,
            n0(e.p50_ms),
            n0(e.p99_ms),
            n0(e.max_ms),
            if e.delivered < e.notifications {
                format!(
                    " (only {} of {} sent {} s after the last was due)",
                    n0(e.delivered as f64),
                    n0(e.notifications as f64),
                    s.grace_seconds
                )
            } else {
                String::new()
            },
            verdict(e.p99_ms <= 250.0 && e.max_ms <= 1000.0 && e.delivered == e.notifications),
            b = e.bound(),
        )?;
        if let Some(h) = &st.history {
            writeln!(
                w,
                "| 4 | history ({} past bookings, {} past deliveries): ratio of p99 lateness / of the sweep's scan time | ≤ 1.2 | {:.2} / {:.2} \
                 (p99 {}{} ms vs {}{} ms; scan {:.3} ms vs {:.3} ms) | {} |",
                n0(suite.history_size.0 as f64),
                n0(suite.history_size.1 as f64),
                st.p99_ratio,
                st.scan_ratio,
                h.bound(),
                n0(h.p99_ms),
                e.bound(),
                n0(e.p99_ms),
                h.scan_ms,
                e.scan_ms,
                verdict(st.p99_ratio <= 1.2 && st.scan_ratio <= 1.2)
            )?;
        }
    }
    if let Some((b, _)) = &r.burst {
        writeln!(
            w,
            "| 5 | worker peak RSS during scenario 2 (largest process) | ≤ 64 MiB | {:.1} MiB | {} |",
            b.peak_rss_mib,
            verdict(b.peak_rss_mib <= 64.0)
        )?;
        writeln!(
            w,
            "| 5 | Postgres transactions per delivered notification | ≤ 1 | {:.2} | {} |",
            b.transactions_per_notification,
            verdict(b.transactions_per_notification <= 1.0)
        )?;
    }
    writeln!(w)?;
    writeln!(w, "## Details")?;
    writeln!(w)?;
    if let Some(raw) = &r.raw {
        writeln!(w, "### 1. Raw queue drain")?;
        writeln!(w)?;
        writeln!(
            w,
            "{} no-op jobs inserted with one `INSERT … SELECT` (run_at in the past), then drained in-process. Throughput = jobs / (last `done_at` − start) \
             on the database clock. Every job ended `Done`: {}. Per run (jobs/s):",
            n0(s.raw_jobs as f64),
            if raw.all_done { "yes" } else { "**no**" }
        )?;
        writeln!(w)?;
        for (k, v) in &raw.per_run {
            let mut top: Vec<_> = raw.sessions.get(k).map(|m| m.iter().collect()).unwrap_or_default();
            top.sort_by(|a, b| b.1.total_cmp(a.1));
            writeln!(
                w,
                "- {k}: {} (database transactions per job: {:.3}; sessions of the last run, average: {})",
                v.iter().map(|x| n0(*x)).collect::<Vec<_>>().join(", "),
                raw.transactions_per_job.get(k).copied().unwrap_or(f64::NAN),
                top.iter()
                    .take(4)
                    .map(|(s, n)| format!("{s} {n:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )?;
        }
        match &raw.graphile {
            GraphileSummary::Measured {
                version,
                every,
                ratio_per_run,
                ..
            } => {
                writeln!(
                    w,
                    "- graphile-worker {version} (`bench/graphile/drain.js`, its own database, the same jobs queued with one `add_jobs`, a worker with \
                     `localQueue: {{ size: 500 }}`, `completeJobBatchDelay: 0`, prepared statements; from just before the worker starts to no job \
                     left, on the database clock), per run, jobs/s by concurrency: {}; project / graphile's best, per run: {}",
                    every
                        .iter()
                        .map(|r| r.iter().map(|(c, x)| format!("{c}: {}", n0(*x))).collect::<Vec<_>>().join(" / "))
                        .collect::<Vec<_>>()
                        .join("; "),
                    ratio_per_run.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ")
                )?;
            }
            GraphileSummary::Skipped(why) => writeln!(w, "- graphile-worker: not run ({why})")?,
        }
        writeln!(w)?;
    }
    if let Some((_, runs)) = &r.burst {
        writeln!(w, "### 2 and 5. End-to-end burst and footprint")?;
        writeln!(w)?;
        writeln!(
            w,
            "Per run: a fresh database with {} students (60 % with a push device, 30 % email only, 10 % phone with push switched off) and one upcoming \
             booking each; the worker processes start and register; then one transaction inserts a `lesson_reminder` per booking (and its apalis job), \
             all due 1.5 s later. Rate = reminders / (last `sent_at` − `due_at`).",
            n0(s.burst as f64)
        )?;
        writeln!(w)?;
        writeln!(
            w,
            "| run | notifications/s | seconds | recorded | sent by channel | sinks (email/sms/push) | peak RSS MiB | transactions / notification | WAL bytes / notification | WARN lines |"
        )?;
        writeln!(w, "|---|---|---|---|---|---|---|---|---|---|")?;
        for (i, b) in runs.iter().enumerate() {
            writeln!(
                w,
                "| {} | {} | {:.2} | {} / {} | {} | {} / {} / {} | {} | {:.2} | {} | {} |",
                i + 1,
                n0(b.per_second),
                b.seconds,
                b.recorded,
                b.notifications,
                b.sent_by_channel
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                b.sink_counts.0,
                b.sink_counts.1,
                b.sink_counts.2,
                b.peak_rss_mib.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(", "),
                b.transactions_per_notification,
                n0(b.wal_bytes_per_notification),
                b.worker_log_warnings
            )?;
        }
        if let Some(b) = runs.last() {
            writeln!(w)?;
            writeln!(
                w,
                "Last run, CPU seconds spent during the burst (wall {:.2} s, 2 cores = {:.2} CPU-s available):",
                b.seconds,
                2.0 * b.seconds
            )?;
            writeln!(w)?;
            for (k, v) in &b.cpu_seconds {
                if k != "wall" {
                    writeln!(w, "- {k}: {v:.2}")?;
                }
            }
            writeln!(w)?;
            if let Some((summary, _)) = &r.burst {
                writeln!(
                    w,
                    "CPU per delivered notification (median of the runs): worker {:.2} ms, Postgres backends {:.2} ms — at most {} \
                     notifications/s on these 2 cores if nothing else ran and nothing waited.",
                    summary.worker_cpu_ms_per_notification,
                    summary.postgres_cpu_ms_per_notification,
                    n0(2000.0 / (summary.worker_cpu_ms_per_notification + summary.postgres_cpu_ms_per_notification))
                )?;
                writeln!(w)?;
            }
            writeln!(
                w,
                "Last run, table activity per delivered notification (`pg_stat_user_tables` deltas, read after the workers stopped): \
                 {:.2} row writes (inserts + updates + deletes) in all.",
                b.row_writes_per_notification()
            )?;
            writeln!(w)?;
            writeln!(
                w,
                "| table | inserts | updates | of which HOT | deletes | index scans | seq scans |"
            )?;
            writeln!(w, "|---|---|---|---|---|---|---|")?;
            for (t, v) in &b.table_ops_per_notification {
                writeln!(
                    w,
                    "| {t} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.4} |",
                    v[0], v[1], v[2], v[3], v[4], v[5]
                )?;
            }
            writeln!(w)?;
            writeln!(
                w,
                "Last run, the bench database's client sessions by state / wait event (average number of sessions, sampled every 20 ms):"
            )?;
            writeln!(w)?;
            let mut sessions: Vec<_> = b.sessions.iter().collect();
            sessions.sort_by(|a, b| b.1.total_cmp(a.1));
            for (k, v) in sessions.iter().take(12) {
                writeln!(w, "- {k}: {v:.2}")?;
            }
            writeln!(w)?;
        }
    }
    if let Some((st, suite)) = &r.steady {
        writeln!(w, "### 3 and 4. Steady lateness and history")?;
        writeln!(w)?;
        writeln!(
            w,
            "One database and one set of worker processes: {} run(s) of {} reminders due one every {:.1} ms over {} s (inserted ahead of time), \
             then the history load ({:.0} s: past bookings, one past reminder each, up to three deliveries per reminder, the sent one with its attempt \
             on its row, loaded with foreign-key triggers off, then `VACUUM (ANALYZE)`), then {} more run(s). Lateness = `sent_at − due_at`. A run \
             is cut off {} s after its last reminder was due; reminders not sent by then count with their lateness at the cut-off (figures marked \
             ≥ are lower bounds) and are cancelled. After each run its rows are deleted and the tables vacuumed and analysed (autovacuum is off \
             on this server), and the first run starts from the same state: statistics taken while no notification was open.",
            s.steady_runs,
            n0(st.empty.notifications as f64),
            1000.0 / s.rate as f64,
            s.steady_seconds,
            suite.history_load_seconds,
            s.steady_runs,
            s.grace_seconds
        )?;
        writeln!(w)?;
        writeln!(
            w,
            "Scan time: the due-scan of `dashlight_worker::delivery::sweep_overdue` (its sub-select, grace 5 s as the periodic reminder sweep \
             uses every 10 s, without the row locks) under `EXPLAIN (ANALYZE, BUFFERS)` at 20/40/60/80 % of each run (server execution time; \
             rows = open notifications overdue by more than 5 s, i.e. what a real sweep would re-enqueue), and the real function's wall time just \
             before each run's first reminder is due and after the run, where it has nothing to do. Real-sweep ratio (history / empty): {:.2}. \
             The workers logged {} WARN/ERROR lines.",
            st.sweep_ratio, suite.worker_log_warnings
        )?;
        writeln!(w)?;
        writeln!(
            w,
            "| history | run | sent by cut-off | p50 ms | p99 ms | max ms | scan mid-run ms (rows) | real sweep before / after, ms |"
        )?;
        writeln!(w, "|---|---|---|---|---|---|---|---|")?;
        for (label, runs) in [("empty", &suite.empty), ("with history", &suite.history)] {
            for (i, x) in runs.iter().enumerate() {
                let b = if x.delivered < x.notifications { "≥ " } else { "" };
                writeln!(
                    w,
                    "| {label} | {} | {} / {} | {b}{} | {b}{} | {b}{} | {} | {} / {} |",
                    i + 1,
                    n0(x.delivered as f64),
                    n0(x.notifications as f64),
                    n0(x.p50_ms),
                    n0(x.p99_ms),
                    n0(x.max_ms),
                    x.scan_mid_ms
                        .iter()
                        .zip(&x.scan_mid_rows)
                        .map(|(v, r)| format!("{v:.3} ({r})"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    x.sweep_before_ms.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", "),
                    x.sweep_after_ms.iter().map(|v| format!("{v:.2}")).collect::<Vec<_>>().join(", "),
                )?;
            }
        }
        writeln!(w)?;
        for (label, agg) in [("empty history", Some(&st.empty)), ("with history", st.history.as_ref())] {
            let Some(agg) = agg else { continue };
            writeln!(w, "Due-scan at 60 % of the last run, {label}:")?;
            writeln!(w)?;
            writeln!(w, "```\n{}\n```", agg.explain)?;
            writeln!(w)?;
            writeln!(
                w,
                "The recorder's settle statement (`delivery::record::SETTLE_SQL`, closing the notifications of recorded sends) \
                 at 50 % of the last run, {label}, on the run's last reminder (rolled back):"
            )?;
            writeln!(w)?;
            writeln!(w, "```\n{}\n```", agg.explain_finish)?;
            writeln!(w)?;
            writeln!(w, "The whole sweep statement after the last run ({label}; rolled back):")?;
            writeln!(w)?;
            writeln!(w, "```\n{}\n```", agg.explain_after)?;
            writeln!(w)?;
        }
    }
    o.push_str(&analysis);
    std::fs::write(path, o)?;
    Ok(())
}
