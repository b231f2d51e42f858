//! `--pooler`: the workers of scenarios 2-4 go through PgBouncer in transaction mode, as a deployment behind a pooler does
//! deploys them (`DATABASE_POOLER=transaction`, `DATABASE_DIRECT_URL` for `LISTEN`). The same
//! approach as the tests' harness (`tests/src/pooler.rs`): Debian's `/usr/sbin/pgbouncer` on a
//! free loopback port with its own ini in a temporary folder, run as `postgres` when we are
//! root, killed when the bench ends.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;

const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// A running PgBouncer in front of the bench's server.
pub struct PgBouncer {
    child: Child,
    dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

impl PgBouncer {
    /// Starts PgBouncer in front of the server of `server_url` with `pool_size` server
    /// connections per database, and waits (up to 30 s) until it listens.
    pub async fn start(server_url: &str, pool_size: u32) -> anyhow::Result<PgBouncer> {
        anyhow::ensure!(
            std::path::Path::new(PGBOUNCER).exists(),
            "{PGBOUNCER} is missing: apt-get install -y pgbouncer"
        );
        let u = url::Url::parse(server_url)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = std::env::temp_dir().join(format!("dashlight-bench-pgbouncer-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let ini = dir.join("pgbouncer.ini");
        let users = dir.join("userlist.txt");
        std::fs::write(&users, "\"root\" \"\"\n\"postgres\" \"\"\n")?;
        std::fs::write(
            &ini,
            format!(
                "[databases]\n* = host={host} port={sport}\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\n\
                 unix_socket_dir =\nauth_type = trust\nauth_file = {users}\nadmin_users = root\npool_mode = transaction\n\
                 max_client_conn = 1000\ndefault_pool_size = {pool_size}\nreserve_pool_size = 0\nquery_wait_timeout = 120\n\
                 logfile = {log}\n",
                host = u.host_str().unwrap_or("127.0.0.1"),
                sport = u.port().unwrap_or(5432),
                users = users.display(),
                log = dir.join("pgbouncer.log").display(),
            ),
        )?;
        let mut cmd = Command::new(PGBOUNCER);
        let root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        if root {
            let _ = Command::new("chown").args(["-R", "postgres"]).arg(&dir).status();
            cmd.args(["-u", "postgres"]);
        }
        let child = cmd
            .arg(&ini)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {PGBOUNCER}"))?;
        let mut b = PgBouncer { child, dir, port };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if let Ok(Some(status)) = b.child.try_wait() {
                anyhow::bail!("pgbouncer exited ({status}): {}", b.log());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "pgbouncer did not listen within 30 s: {}",
                b.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(b)
    }

    /// `url` with its host and port replaced by the pooler's.
    pub fn url(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).expect("a database URL");
        u.set_host(Some("127.0.0.1")).expect("host");
        u.set_port(Some(self.port)).expect("port");
        u.to_string()
    }

    /// Its process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
