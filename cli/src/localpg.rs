//! Finding a Postgres for `dashlight up` when `DATABASE_URL` is unset: a server on
//! 127.0.0.1:5432 if one answers; else the machine's cluster started with pg_ctlcluster; else a
//! private cluster under `./.pgdata` made with the machine's initdb/pg_ctl (port 55432).

use std::{path::PathBuf, process::Command, time::Duration};

use anyhow::Context as _;

const LOCAL: &str = "postgres://root@127.0.0.1:5432/dashlight";
const PRIVATE_PORT: u16 = 55432;

async fn answers(port: u16) -> bool {
    tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(("127.0.0.1", port)))
        .await
        .is_ok_and(|r| r.is_ok())
}

async fn wait_for(port: u16) -> bool {
    for _ in 0..60 {
        if answers(port).await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

fn pg_bin(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .collect();
    dirs.sort();
    dirs.into_iter().rev().map(|d| d.join(name)).find(|p| p.exists())
}

/// Returns a URL of a running Postgres, starting one if needed.
pub async fn find_or_start() -> anyhow::Result<String> {
    if answers(5432).await {
        println!("postgres: found a server on 127.0.0.1:5432");
        return Ok(LOCAL.into());
    }
    // The machine's own cluster (Debian layout).
    if let Ok(versions) = std::fs::read_dir("/etc/postgresql") {
        for v in versions.flatten() {
            let version = v.file_name().to_string_lossy().to_string();
            println!("postgres: starting the machine's cluster {version}/main");
            let _ = Command::new("pg_ctlcluster")
                .args(["--skip-systemctl-redirect", &version, "main", "start"])
                .status();
            if wait_for(5432).await {
                return Ok(LOCAL.into());
            }
        }
    }
    if answers(PRIVATE_PORT).await {
        return Ok(format!("postgres://root@127.0.0.1:{PRIVATE_PORT}/dashlight"));
    }
    let initdb = pg_bin("initdb").context("no PostgreSQL found: set DATABASE_URL, or install PostgreSQL (apt-get install postgresql)")?;
    let pg_ctl = pg_bin("pg_ctl").context("pg_ctl not found next to initdb")?;
    let data = std::env::current_dir()?.join(".pgdata");
    let as_postgres = nix_is_root();
    let run = |cmd: &PathBuf, args: &[&str]| -> anyhow::Result<()> {
        let status = if as_postgres {
            Command::new("runuser")
                .arg("-u")
                .arg("postgres")
                .arg("--")
                .arg(cmd)
                .args(args)
                .status()
        } else {
            Command::new(cmd).args(args).status()
        }
        .with_context(|| format!("running {}", cmd.display()))?;
        anyhow::ensure!(status.success(), "{} {} failed", cmd.display(), args.join(" "));
        Ok(())
    };
    if !data.join("PG_VERSION").exists() {
        println!("postgres: creating a private cluster in {}", data.display());
        std::fs::create_dir_all(&data)?;
        if as_postgres {
            let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&data).status();
        }
        let d = data.to_string_lossy().to_string();
        run(&initdb, &["-D", &d, "-U", "root", "--auth=trust", "-E", "UTF8"])?;
    }
    let d = data.to_string_lossy().to_string();
    let opts = format!("-p {PRIVATE_PORT} -c listen_addresses=127.0.0.1 -k /tmp");
    let log = format!("{d}/server.log");
    run(&pg_ctl, &["-D", &d, "-o", &opts, "-l", &log, "start"])?;
    anyhow::ensure!(wait_for(PRIVATE_PORT).await, "the private cluster did not start: see {log}");
    Ok(format!("postgres://root@127.0.0.1:{PRIVATE_PORT}/dashlight"))
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}
