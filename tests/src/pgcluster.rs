//! A private PostgreSQL cluster for tests that stop and start the server (the shared one on
//! 5432 must never be stopped): `initdb` into a temporary folder, `pg_ctl start` on a free
//! loopback port, as the `postgres` user when run as root (PostgreSQL refuses root), the way
//! `dashlight up` starts its `./.pgdata` cluster (cli/src/localpg.rs). Stopped immediately and
//! removed on drop.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::Context as _;

/// A private cluster.
pub struct PrivateCluster {
    data: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
    as_postgres: bool,
}

fn pg_bin(name: &str) -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no /usr/lib/postgresql: install PostgreSQL")?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .collect();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .with_context(|| format!("{name} not found under /usr/lib/postgresql/*/bin"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl PrivateCluster {
    /// `initdb` (trust, superuser `root`) and start it on a free port.
    pub fn start() -> anyhow::Result<PrivateCluster> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let data = std::env::temp_dir().join(format!("dashlight-pg-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&data)?;
        let as_postgres = is_root();
        if as_postgres {
            let _ = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&data).status();
        }
        let cluster = PrivateCluster { data, port, as_postgres };
        let d = cluster.data.to_string_lossy().to_string();
        cluster.run(
            &pg_bin("initdb")?,
            &["-D", &d, "-U", "root", "--auth=trust", "-E", "UTF8", "--no-sync"],
        )?;
        cluster.start_again()?;
        Ok(cluster)
    }

    fn run(&self, cmd: &PathBuf, args: &[&str]) -> anyhow::Result<()> {
        let mut c = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(cmd);
            c
        } else {
            Command::new(cmd)
        };
        let out = c
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", cmd.display()))?;
        anyhow::ensure!(
            out.status.success(),
            "{} {} failed: {}{}",
            cmd.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Starts the server and waits until it accepts connections (`pg_ctl -w`, 60 s).
    pub fn start_again(&self) -> anyhow::Result<()> {
        let d = self.data.to_string_lossy().to_string();
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k /tmp -c max_connections=200 -c fsync=off",
            self.port
        );
        let log = format!("{d}/server.log");
        self.run(&pg_bin("pg_ctl")?, &["-D", &d, "-o", &opts, "-l", &log, "-w", "-t", "60", "start"])
    }

    /// Stops the server (`fast`: connections are cut, as in a restart or failover).
    pub fn stop(&self) -> anyhow::Result<()> {
        let d = self.data.to_string_lossy().to_string();
        self.run(&pg_bin("pg_ctl")?, &["-D", &d, "-m", "fast", "-w", "-t", "60", "stop"])
    }

    /// A URL of database `db` on it.
    pub fn url(&self, db: &str) -> String {
        format!("postgres://root@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        let d = self.data.to_string_lossy().to_string();
        if let Ok(pg_ctl) = pg_bin("pg_ctl") {
            let _ = self.run(&pg_ctl, &["-D", &d, "-m", "immediate", "-w", "stop"]);
        }
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
