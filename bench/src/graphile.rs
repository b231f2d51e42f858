//! Scenario 1's comparison: the same raw drain run by graphile-worker, with its
//! batching on, on the same Postgres and the same number of jobs, by the Node driver
//! `bench/graphile/drain.js`.
//!
//! Owns the graphile side only: finding `node` and `npm`, installing the pinned
//! [`GRAPHILE_VERSION`] once into `<target dir>/graphile-bench` (reused while it is there), a
//! database of its own (`dashlight_bench_<pid>_graphile`, created empty and dropped here; a
//! crashed run's is dropped by [`crate::pg::drop_stale`]), and reading the
//! driver's JSON line. What the driver measures is said at the top of `drain.js`.
//! When `node` or `npm` is missing, [`Graphile::find`] says so and the bench skips only this
//! comparison.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};
use tokio::process::Command;

use crate::pg;

/// The graphile-worker release compared against (the "0.17.3 today").
pub const GRAPHILE_VERSION: &str = "0.17.3";

/// Concurrencies the driver runs; the best counts (as the comparison does).
pub const CONCURRENCIES: [u32; 2] = [10, 24];

/// One worker run of the driver.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphileRun {
    /// `concurrentJobs`.
    pub concurrency: u32,
    /// Seconds from just before the worker started to the moment no job was left.
    pub seconds: f64,
    /// Jobs per second.
    pub per_second: f64,
    /// Every job's task succeeded and every job was completed (deleted).
    pub all_completed: bool,
}

/// What one invocation of the driver printed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraphileDrain {
    /// graphile-worker's version, from its installed `package.json`.
    pub version: String,
    /// Jobs per run.
    pub jobs: u64,
    /// One per concurrency.
    pub runs: Vec<GraphileRun>,
    /// The fastest run whose jobs all completed.
    pub best: Option<GraphileRun>,
}

/// An installed graphile-worker and the driver that runs it.
#[derive(Debug, Clone)]
pub struct Graphile {
    node_modules: PathBuf,
    driver: PathBuf,
}

impl Graphile {
    /// Finds `node` and `npm` and installs graphile-worker into `<target dir>/graphile-bench`
    /// unless the pinned version is already there. `Ok(Err(why))` when the comparison cannot run
    /// here (no `node` or `npm` on PATH); `Err` when it should have and failed.
    pub async fn find(target_dir: &Path) -> anyhow::Result<Result<Graphile, String>> {
        for tool in ["node", "npm"] {
            let found = Command::new(tool)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .await
                .is_ok_and(|s| s.success());
            if !found {
                return Ok(Err(format!("`{tool}` is not on PATH: the graphile-worker comparison is skipped")));
            }
        }
        let prefix = target_dir.join("graphile-bench");
        let node_modules = prefix.join("node_modules");
        let manifest = node_modules.join("graphile-worker").join("package.json");
        if installed_version(&manifest).as_deref() != Some(GRAPHILE_VERSION) {
            eprintln!(
                "bench: installing graphile-worker@{GRAPHILE_VERSION} into {} (once; reused afterwards)",
                prefix.display()
            );
            std::fs::create_dir_all(&prefix)?;
            let out = Command::new("npm")
                .arg("install")
                .arg("--prefix")
                .arg(&prefix)
                .args(["--no-audit", "--no-fund", "--loglevel=error"])
                .arg(format!("graphile-worker@{GRAPHILE_VERSION}"))
                .stdin(Stdio::null())
                .output()
                .await
                .context("running npm install")?;
            if !out.status.success() {
                bail!(
                    "npm install graphile-worker@{GRAPHILE_VERSION} failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let got = installed_version(&manifest);
            if got.as_deref() != Some(GRAPHILE_VERSION) {
                bail!("npm installed graphile-worker {got:?}, not {GRAPHILE_VERSION}");
            }
        }
        let driver = crate::workers::repo_root().join("bench/graphile/drain.js");
        if !driver.exists() {
            bail!("{} is missing", driver.display());
        }
        Ok(Ok(Graphile { node_modules, driver }))
    }

    /// Runs the driver on a fresh database of its own: `jobs` no-op jobs at each of
    /// [`CONCURRENCIES`].
    pub async fn drain(&self, jobs: u64) -> anyhow::Result<GraphileDrain> {
        let db = pg::BenchDb::create_empty("graphile").await?;
        db.pool.close().await;
        let result = self.run_driver(&db.url, jobs).await;
        db.drop_db().await?;
        result
    }

    async fn run_driver(&self, url: &str, jobs: u64) -> anyhow::Result<GraphileDrain> {
        let concurrency = CONCURRENCIES.map(|c| c.to_string()).join(",");
        let jobs = jobs.to_string();
        let child = Command::new("node")
            .arg(&self.driver)
            .arg("--modules")
            .arg(&self.node_modules)
            .args(["--url", url, "--jobs", jobs.as_str(), "--concurrency", concurrency.as_str()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting node")?;
        let out = tokio::time::timeout(Duration::from_secs(1300), child.wait_with_output())
            .await
            .context("the graphile-worker drain did not finish in 1,300 s")??;
        if !out.status.success() {
            bail!("the graphile-worker drain failed ({})", out.status);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line = stdout
            .lines()
            .rev()
            .find(|l| l.starts_with('{'))
            .context("the graphile-worker drain printed no result")?;
        let drain: GraphileDrain =
            serde_json::from_str(line).with_context(|| format!("reading the graphile-worker drain's result {line:?}"))?;
        if drain.best.is_none() {
            bail!("graphile-worker did not complete every job in any run: {line}");
        }
        Ok(drain)
    }
}

fn installed_version(manifest: &Path) -> Option<String> {
    let text = std::fs::read_to_string(manifest).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("version")?.as_str().map(str::to_owned)
}
