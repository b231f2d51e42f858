//! `bench`: Dashlight's benchmark. Not part of the test suite.
//!
//! ```text
//! cargo build --release -p dashlight-worker -p dashlight-bench
//! cargo run --release -p dashlight-bench -- all            # every scenario (3 runs of 1-2, 2 of 3-4), writes BENCHMARKS.md
//! cargo run --release -p dashlight-bench -- all --quick    # reduced sizes, 1 run, under a minute
//! cargo run --release -p dashlight-bench -- burst --perf target/burst.perf
//! ```
//!
//! Everything runs on loopback: fresh databases on the local PostgreSQL (`BENCH_DATABASE_URL`,
//! default `postgres://root@127.0.0.1:5432/postgres`), dropped afterwards (kept, and named on
//! stderr, when `BENCH_KEEP_DB` is set, to look into a run with psql); the release
//! `dashlight-worker` processes; and the sinks of [`sinks`]. Each scenario prints one JSON line
//! on stdout (progress goes to stderr).
//!
//! - [`raw`]: scenario 1, raw queue drain (in-process apalis, project vs default configuration);
//!   [`graphile`]: the same drain by graphile-worker, when `node` and `npm` are on PATH.
//! - [`burst`]: scenario 2, end-to-end burst, and scenario 5, footprint.
//! - [`steady`]: scenario 3, steady lateness, and scenario 4, history.
//! - [`mixed`]: reminders' lateness while a bulk of invoice emails drains.
//! - [`purge`]: reminders' lateness while the retention purge deletes old deliveries.
//! - [`ceiling`]: an experiment, the database's ceiling for a batched delivery path.
//! - [`world`]: the data; [`workers`]: the worker processes; [`pg`]: databases and server
//!   statistics; [`report`]: BENCHMARKS.md.

mod burst;
mod ceiling;
mod graphile;
mod mixed;
mod pg;
mod pooler;
mod purge;
mod raw;
mod report;
mod sinks;
mod steady;
mod workers;
mod world;

use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};
use serde_json::json;

use crate::{sinks::Sinks, workers::WorkerSettings, world::Keys};

/// Which scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// 1: raw queue drain.
    Raw,
    /// 2: end-to-end burst.
    Burst,
    /// 3: steady lateness at a fixed rate.
    Steady,
    /// 4: steady lateness with a large history (runs 3 first, for the ratio).
    History,
    /// 5: footprint (measured during the burst).
    Footprint,
    /// Every scenario; writes BENCHMARKS.md.
    All,
    /// Not in `all`: steady lateness of reminders at --rate while --bulk invoice
    /// emails drain at the same time (see `mixed`).
    Mixed,
    /// Not in `all`: steady lateness of reminders at --rate while the retention purge deletes
    /// --old deliveries older than 400 days (see `purge`).
    Purge,
    /// Experiment (not in `all`): the database's ceiling for a batched delivery path, with the
    /// scenario 2 reminders (see `ceiling`).
    Ceiling,
}

/// Dashlight's benchmark: queue drain, end-to-end burst, steady lateness, history, footprint.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Scenario to run.
    #[arg(value_enum)]
    scenario: Scenario,
    /// Reduced sizes and one run per scenario (the whole of `all` in under a minute).
    #[arg(long)]
    quick: bool,
    /// Runs per scenario (median reported); default 3, or 1 with --quick.
    #[arg(long)]
    runs: Option<usize>,
    /// Worker processes for scenarios 2-5.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// `WORKER_CONCURRENCY` (the project's default).
    #[arg(long, default_value_t = dashlight_core::config::DEFAULT_WORKER_CONCURRENCY)]
    concurrency: usize,
    /// `WORKER_BATCH_SIZE` (the project's default).
    #[arg(long, default_value_t = dashlight_core::config::DEFAULT_WORKER_BATCH_SIZE)]
    batch: usize,
    /// `POLL_INTERVAL` in ms (the project's default is 250).
    #[arg(long, default_value_t = 250)]
    poll_ms: u64,
    /// Jobs of scenario 1 (default 20,000; 3,000 with --quick).
    #[arg(long)]
    raw_jobs: Option<u64>,
    /// Reminders of scenario 2 (default 20,000; 2,000 with --quick).
    #[arg(long)]
    burst: Option<u64>,
    /// Seconds of scenarios 3 and 4 (default 60; 3 with --quick).
    #[arg(long)]
    steady_seconds: Option<u64>,
    /// Reminders per second of scenarios 3 and 4.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Past bookings of scenario 4 (default 1,000,000; 50,000 with --quick).
    #[arg(long)]
    history_bookings: Option<i64>,
    /// Past deliveries of scenario 4 (default 3 × bookings, at most 3 per booking).
    #[arg(long)]
    history_deliveries: Option<i64>,
    /// Runs of scenarios 3 and 4 each (a run lasts about --steady-seconds + --grace-seconds + 15 s);
    /// default: --runs, at most 2 (keeps `all` near 15 minutes).
    #[arg(long)]
    steady_runs: Option<usize>,
    /// How long after its last reminder was due a steady run waits before it is cut off
    /// (default 10 s; 3 s with --quick).
    #[arg(long)]
    grace_seconds: Option<u64>,
    /// An experiment: `name=value` applied to the bench databases (`ALTER DATABASE … SET`), e.g.
    /// `synchronous_commit=off`. Repeatable. Results of such runs are not written to BENCHMARKS.md.
    #[arg(long)]
    db_setting: Vec<String>,
    /// An experiment: `sslmode` for the workers' (and scenario 1's) database connections, e.g.
    /// `disable`; by default the driver's `prefer` (TLS when the server offers it, as this one does).
    #[arg(long)]
    sslmode: Option<String>,
    /// Run the worker processes under this program (split on spaces), e.g.
    /// `"valgrind --tool=callgrind --callgrind-out-file=target/worker.%p.callgrind"`.
    #[arg(long)]
    worker_wrapper: Option<String>,
    /// Notifications per statement of the `ceiling` experiment.
    #[arg(long, default_value_t = 500)]
    ceiling_batch: i64,
    /// Print `EXPLAIN (ANALYZE, BUFFERS)` of one claim of the `ceiling` experiment.
    #[arg(long)]
    ceiling_explain: bool,
    /// Bulk invoice emails of the `mixed` scenario (default 20,000; 2,000 with --quick).
    #[arg(long)]
    bulk: Option<u64>,
    /// Old deliveries the `purge` scenario deletes (default 3,000,000; 100,000 with --quick).
    #[arg(long)]
    old: Option<u64>,
    /// The `purge` scenario's control: the old deliveries are loaded but not purged (what the
    /// reminders' lateness is on that database without the purge).
    #[arg(long)]
    purge_off: bool,
    /// The `purge` scenario waits for the whole purge to end (by default it stops the purge once
    /// the reminders are measured and reports its pace so far).
    #[arg(long)]
    purge_whole: bool,
    /// An experiment: rows per statement of the `purge` scenario (default: the worker's).
    #[arg(long)]
    purge_batch: Option<i64>,
    /// An experiment: the purge's rest after each statement, as a multiple of how long it took
    /// (default: the worker's).
    #[arg(long)]
    purge_rest: Option<f64>,
    /// Concurrent batchers of the `ceiling` experiment.
    #[arg(long, default_value_t = 2)]
    ceiling_tasks: usize,
    /// Record a system-wide `perf` profile (cpu-clock) of the first burst into this file.
    #[arg(long)]
    perf: Option<PathBuf>,
    /// Scenarios 2-4 with the workers behind PgBouncer in transaction mode (started by the bench
    /// on a free loopback port, `--pooler-size` server connections): `DATABASE_POOLER=transaction`,
    /// `DATABASE_DIRECT_URL` the direct connection (a deployment behind a pooler).
    #[arg(long)]
    pooler: bool,
    /// PgBouncer's `default_pool_size` with `--pooler`.
    #[arg(long, default_value_t = 20)]
    pooler_size: u32,
    /// Scenario 1 without the graphile-worker comparison (which runs whenever `node` and `npm`
    /// are on PATH).
    #[arg(long)]
    no_graphile: bool,
    /// Write BENCHMARKS.md even for a single scenario or --quick.
    #[arg(long)]
    write: bool,
    /// Do not write BENCHMARKS.md.
    #[arg(long)]
    no_write: bool,
}

/// What every scenario shares.
pub struct Ctx {
    /// The release worker binary.
    pub worker_bin: PathBuf,
    /// The sinks.
    pub sinks: Sinks,
    /// VAPID and subscription keys.
    pub keys: Keys,
    /// Worker process settings.
    pub settings: WorkerSettings,
    /// `--db-setting`s.
    pub db_settings: Vec<String>,
    /// With `--pooler`, PgBouncer's process (its CPU time is reported beside the workers').
    pub pooler_pid: Option<u32>,
}

/// Run `k` of graphile-worker's drain, reported on stderr.
async fn graphile_drain(g: &graphile::Graphile, jobs: u64, k: usize) -> anyhow::Result<graphile::GraphileDrain> {
    let d = g.drain(jobs).await?;
    let best = d.best.as_ref().expect("checked by Graphile::drain");
    eprintln!(
        "  graphile-worker {} run {}: {:.0} jobs/s (best: concurrency {}; {})",
        d.version,
        k + 1,
        best.per_second,
        best.concurrency,
        d.runs
            .iter()
            .map(|r| format!(
                "{}: {:.0}{}",
                r.concurrency,
                r.per_second,
                if r.all_completed { "" } else { " NOT ALL COMPLETED" }
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(d)
}

/// The target directory the bench and worker binaries were built into (`<target>/release/bench`).
fn target_dir(worker_bin: &std::path::Path) -> anyhow::Result<PathBuf> {
    worker_bin
        .parent()
        .and_then(|release| release.parent())
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("{} has no target directory", worker_bin.display()))
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,sqlx::query=error".into()))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 3 }).max(1);
    let sizes = report::Sizes {
        runs,
        raw_jobs: args.raw_jobs.unwrap_or(if args.quick { 3_000 } else { 20_000 }),
        burst: args.burst.unwrap_or(if args.quick { 2_000 } else { 20_000 }),
        rate: args.rate,
        steady_seconds: args.steady_seconds.unwrap_or(if args.quick { 3 } else { 60 }),
        history_bookings: args.history_bookings.unwrap_or(if args.quick { 50_000 } else { 1_000_000 }),
        history_deliveries: 0,
        quick: args.quick,
        steady_runs: args.steady_runs.unwrap_or(runs.min(2)).max(1),
        grace_seconds: args.grace_seconds.unwrap_or(if args.quick { 3 } else { 10 }),
        workers: args.workers,
        concurrency: args.concurrency,
        batch: args.batch,
        poll_ms: args.poll_ms,
    };
    let sizes = report::Sizes {
        history_deliveries: args.history_deliveries.unwrap_or(sizes.history_bookings * 3),
        ..sizes
    };
    let (worker_bin, stale) = workers::worker_binary()?;
    if let Some(w) = &stale {
        eprintln!("bench: warning: {w}");
    }
    pg::drop_stale().await?;
    let pooler = match args.pooler {
        true => Some(pooler::PgBouncer::start(&pg::server_url(), args.pooler_size).await?),
        false => None,
    };
    if let Some(p) = &pooler {
        eprintln!(
            "bench: workers go through PgBouncer (transaction mode, pool size {}) at {}",
            args.pooler_size,
            p.url(&pg::server_url())
        );
    }
    let ctx = Ctx {
        worker_bin,
        sinks: Sinks::start().await?,
        keys: Keys::generate(),
        settings: WorkerSettings {
            processes: args.workers,
            concurrency: args.concurrency,
            batch: args.batch,
            poll_ms: args.poll_ms,
            sslmode: args.sslmode.clone(),
            wrapper: args
                .worker_wrapper
                .as_deref()
                .map(|w| w.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
            pooler_port: pooler.as_ref().map(|p| p.port),
        },
        db_settings: args.db_setting.clone(),
        pooler_pid: pooler.as_ref().map(|p| p.pid()),
    };
    let machine = report::Machine::read().await?;
    eprintln!("bench: {}", machine.summary());
    let s = args.scenario;
    let mut results = report::Results {
        stale_binary: stale,
        ..Default::default()
    };

    if matches!(s, Scenario::Raw | Scenario::All) {
        eprintln!("== 1. raw queue drain: {} no-op jobs, {} run(s) per variant", sizes.raw_jobs, runs);
        let graphile = match args.no_graphile {
            true => Err("--no-graphile".to_owned()),
            false => graphile::Graphile::find(&target_dir(&ctx.worker_bin)?).await?,
        };
        if let Err(why) = &graphile {
            eprintln!("bench: {why}");
        }
        let db = pg::BenchDb::create("raw", &ctx.db_settings).await?;
        db.pool.close().await;
        let url = ctx.settings.database_url(&db.url);
        let mut out: Vec<(raw::Variant, raw::DrainResult)> = vec![];
        let mut graphile_out = vec![];
        for k in 0..runs {
            // The project's drain and graphile's back to back, in alternating order (this
            // machine's speed drifts within minutes), then the apalis references.
            if k % 2 == 1
                && let Ok(g) = &graphile
            {
                graphile_out.push(graphile_drain(g, sizes.raw_jobs, k).await?);
            }
            for v in raw::Variant::ALL {
                let queue = format!("bench.noop.{}.{k}", v.as_str());
                let r = raw::drain(&db, &url, v, &queue, sizes.raw_jobs, &ctx.settings).await?;
                eprintln!(
                    "  {} run {}: {:.0} jobs/s ({:.2} s, all done: {}, {:.3} transactions/job)",
                    v.as_str(),
                    k + 1,
                    r.per_second,
                    r.seconds,
                    r.all_done,
                    r.transactions_per_job
                );
                out.push((v, r));
                if v == raw::Variant::Project
                    && k % 2 == 0
                    && let Ok(g) = &graphile
                {
                    graphile_out.push(graphile_drain(g, sizes.raw_jobs, k).await?);
                }
            }
        }
        db.drop_db().await?;
        let raw = report::RawSummary::new(&out, graphile.as_ref().map(|_| graphile_out.as_slice()).map_err(String::as_str));
        if let report::GraphileSummary::Measured {
            version,
            jobs_per_second,
            ratio_project_to_graphile,
            ratio_per_run,
            ..
        } = &raw.graphile
        {
            eprintln!(
                "  project {:.0} jobs/s vs graphile-worker {version} {:.0} jobs/s (medians): ratio {:.2} (per run: {})",
                raw.jobs_per_second.get("project").copied().unwrap_or(f64::NAN),
                jobs_per_second,
                ratio_project_to_graphile,
                ratio_per_run.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ")
            );
        }
        println!(
            "{}",
            json!({"scenario": "raw_drain", "jobs": sizes.raw_jobs, "runs": runs, "summary": raw})
        );
        results.raw = Some(raw);
    }

    if matches!(s, Scenario::Burst | Scenario::Footprint | Scenario::All) {
        eprintln!(
            "== 2. end-to-end burst: {} lesson reminders due at once, {} run(s), {} worker process(es)",
            sizes.burst, runs, args.workers
        );
        let mut out = vec![];
        for k in 0..runs {
            let perf = if k == 0 { args.perf.clone() } else { None };
            let r = burst::run(&ctx, sizes.burst, &format!("burst{k}"), perf).await?;
            eprintln!(
                "  run {}: {:.0} notifications/s ({} of {} recorded in {:.2} s), peak RSS {:?} MiB, {:.2} transactions/notification",
                k + 1,
                r.per_second,
                r.recorded,
                r.notifications,
                r.seconds,
                r.peak_rss_mib.iter().map(|m| m.round()).collect::<Vec<_>>(),
                r.transactions_per_notification
            );
            eprintln!(
                "    per notification: CPU worker {:.3} ms + Postgres {:.3} ms = {:.3} ms; row writes (pg_stat_user_tables):",
                r.cpu_ms_per_notification("worker processes"),
                r.cpu_ms_per_notification("postgres backends"),
                r.cpu_ms_per_notification("worker processes") + r.cpu_ms_per_notification("postgres backends"),
            );
            for line in r.row_writes_lines() {
                eprintln!("      {line}");
            }
            out.push(r);
        }
        let summary = report::BurstSummary::new(&out);
        if s != Scenario::Footprint {
            println!(
                "{}",
                json!({"scenario": "burst", "notifications": sizes.burst, "runs": runs, "per_second": summary.per_second,
                       "all_recorded": summary.all_recorded, "per_run": out.iter().map(|r| r.per_second).collect::<Vec<_>>()})
            );
        }
        println!(
            "{}",
            json!({"scenario": "footprint", "peak_rss_mib": summary.peak_rss_mib, "transactions_per_notification": summary.transactions_per_notification,
                   "wal_bytes_per_notification": summary.wal_bytes_per_notification,
                   "worker_cpu_ms_per_notification": summary.worker_cpu_ms_per_notification,
                   "row_writes_per_notification": summary.row_writes_per_notification,
                   "row_writes_by_table": out.last().map(|r| r.table_ops_per_notification.iter()
                       .map(|(t, v)| (t.clone(), json!({"inserts": v[0], "updates": v[1], "hot": v[2], "deletes": v[3]})))
                       .collect::<serde_json::Map<_, _>>()),
                   "postgres_cpu_ms_per_notification": summary.postgres_cpu_ms_per_notification})
        );
        results.burst = Some((summary, out));
    }

    if matches!(s, Scenario::Steady | Scenario::History | Scenario::All) {
        let history = matches!(s, Scenario::History | Scenario::All).then_some((sizes.history_bookings, sizes.history_deliveries));
        eprintln!(
            "== 3{}. steady: {} reminders/s for {} s, {} run(s){}",
            if history.is_some() { "+4" } else { "" },
            sizes.rate,
            sizes.steady_seconds,
            sizes.steady_runs,
            history
                .map(|(b, d)| format!(", then with {b} past bookings and {d} past deliveries"))
                .unwrap_or_default()
        );
        let suite = steady::run(
            &ctx,
            sizes.rate,
            Duration::from_secs(sizes.steady_seconds),
            Duration::from_secs(sizes.grace_seconds),
            sizes.steady_runs,
            history,
        )
        .await?;
        let summary = report::SteadySummary::new(&suite);
        println!(
            "{}",
            json!({"scenario": "steady", "rate": sizes.rate, "seconds": sizes.steady_seconds, "runs": sizes.steady_runs,
                   "p50_ms": summary.empty.p50_ms, "p99_ms": summary.empty.p99_ms, "max_ms": summary.empty.max_ms,
                   "delivered": summary.empty.delivered, "notifications": summary.empty.notifications})
        );
        if let Some(h) = &summary.history {
            println!(
                "{}",
                json!({"scenario": "history", "past_bookings": suite.history_size.0, "past_deliveries": suite.history_size.1,
                       "p99_ms": h.p99_ms, "p99_ratio": summary.p99_ratio, "scan_ms_empty": summary.empty.scan_ms,
                       "scan_ms_history": h.scan_ms, "scan_ratio": summary.scan_ratio})
            );
        }
        results.steady = Some((summary, suite));
    }

    if s == Scenario::Mixed {
        let bulk = args.bulk.unwrap_or(if args.quick { 2_000 } else { 20_000 });
        eprintln!(
            "== mixed: {} reminders/s for {} s while {bulk} invoice emails drain, {} run(s)",
            sizes.rate, sizes.steady_seconds, runs
        );
        for k in 0..runs {
            let r = mixed::run(
                &ctx,
                sizes.rate,
                Duration::from_secs(sizes.steady_seconds),
                Duration::from_secs(sizes.grace_seconds),
                bulk,
            )
            .await?;
            eprintln!("  run {}: {}", k + 1, serde_json::to_string(&r)?);
            println!(
                "{}",
                json!({"scenario": "mixed", "run": k + 1, "rate": sizes.rate, "seconds": sizes.steady_seconds, "result": r})
            );
        }
    }

    if s == Scenario::Purge {
        let old = args.old.unwrap_or(if args.quick { 100_000 } else { 3_000_000 });
        eprintln!(
            "== purge: {} reminders/s for {} s while {old} old deliveries are purged, {} run(s)",
            sizes.rate, sizes.steady_seconds, runs
        );
        for k in 0..runs {
            let mut o = purge::default_options();
            o.batch = args.purge_batch.unwrap_or(o.batch);
            o.rest = args.purge_rest.unwrap_or(o.rest);
            let r = purge::run(
                &ctx,
                sizes.rate,
                Duration::from_secs(sizes.steady_seconds),
                Duration::from_secs(sizes.grace_seconds),
                old,
                (!args.purge_off).then_some(o),
                args.purge_whole,
            )
            .await?;
            eprintln!("  run {}: {}", k + 1, serde_json::to_string(&r)?);
            println!(
                "{}",
                json!({"scenario": "purge", "run": k + 1, "rate": sizes.rate, "seconds": sizes.steady_seconds, "result": r})
            );
        }
    }

    if s == Scenario::Ceiling {
        eprintln!(
            "== ceiling: {} reminders, {} per statement, {} batcher(s)",
            sizes.burst, args.ceiling_batch, args.ceiling_tasks
        );
        for k in 0..runs {
            let r = ceiling::run(
                &ctx,
                sizes.burst,
                args.ceiling_batch,
                args.ceiling_tasks,
                k == 0 && args.ceiling_explain,
            )
            .await?;
            eprintln!(
                "  run {}: {:.0} notifications/s, {:.4} transactions/notification",
                k + 1,
                r.per_second,
                r.transactions_per_notification
            );
            println!("{}", json!({"scenario": "ceiling", "run": k + 1, "result": r}));
        }
    }

    results.elapsed_seconds = started.elapsed().as_secs_f64();
    if s == Scenario::All {
        let summary = report::summary(&results);
        for line in summary.lines() {
            eprintln!("bench: {line}");
        }
        println!("{}", json!({"scenario": "summary", "summary": results.summary_json()}));
    }
    eprintln!("bench: done in {:.0} s", results.elapsed_seconds);
    let write = !args.no_write
        && args.db_setting.is_empty()
        && args.sslmode.is_none()
        && args.worker_wrapper.is_none()
        && !args.pooler
        && (args.write || (s == Scenario::All && !args.quick));
    if write {
        let path = workers::repo_root().join("BENCHMARKS.md");
        report::write(&path, &machine, &sizes, &results)?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}
