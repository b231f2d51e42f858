//! PgBouncer in transaction mode, as production runs it: started on a free loopback port in
//! front of a Postgres server, with its own ini and user list in a temporary folder, as a child
//! process killed on drop. Debian's `pgbouncer` (1.18, `/usr/sbin/pgbouncer`; `.ci/run` installs
//! it) refuses to run as root: as root it is started with `-u postgres`, so the child is
//! PgBouncer itself and killing it stops the pooler.
//!
//! The ini deliberately leaves `ignore_startup_parameters` empty: with
//! `DATABASE_POOLER=transaction` the programs send no startup parameter PgBouncer refuses.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;

/// Where Debian installs the binary.
pub const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// A running PgBouncer.
pub struct PgBouncer {
    child: Child,
    dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// PgBouncer's settings for a test.
#[derive(Debug, Clone)]
pub struct PoolerSettings {
    /// The Postgres server behind it.
    pub server_host: String,
    /// Its port.
    pub server_port: u16,
    /// `max_client_conn`.
    pub max_client_conn: u32,
    /// `default_pool_size`: server connections per database and user.
    pub default_pool_size: u32,
}

impl PoolerSettings {
    /// In front of the server of `url` (host and port), with room for `clients` client
    /// connections and `server_connections` server connections per database.
    pub fn for_url(url: &str, clients: u32, server_connections: u32) -> PoolerSettings {
        let u = url::Url::parse(url).expect("a database URL");
        PoolerSettings {
            server_host: u.host_str().unwrap_or("127.0.0.1").to_owned(),
            server_port: u.port().unwrap_or(5432),
            max_client_conn: clients,
            default_pool_size: server_connections,
        }
    }
}

impl PgBouncer {
    /// Starts PgBouncer and waits (up to 30 s) until it accepts connections.
    pub async fn start(settings: &PoolerSettings) -> anyhow::Result<PgBouncer> {
        anyhow::ensure!(
            std::path::Path::new(PGBOUNCER).exists(),
            "{PGBOUNCER} is missing: apt-get install -y pgbouncer (.ci/run does)"
        );
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("dashlight-pgbouncer-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let ini = dir.join("pgbouncer.ini");
        let users = dir.join("userlist.txt");
        std::fs::write(&users, "\"root\" \"\"\n\"postgres\" \"\"\n")?;
        std::fs::write(
            &ini,
            format!(
                "[databases]\n\
                 * = host={host} port={sport}\n\
                 [pgbouncer]\n\
                 listen_addr = 127.0.0.1\n\
                 listen_port = {port}\n\
                 unix_socket_dir =\n\
                 auth_type = trust\n\
                 auth_file = {users}\n\
                 admin_users = root\n\
                 stats_users = root\n\
                 pool_mode = transaction\n\
                 max_client_conn = {clients}\n\
                 default_pool_size = {pool}\n\
                 reserve_pool_size = 0\n\
                 server_login_retry = 1\n\
                 server_connect_timeout = 5\n\
                 query_wait_timeout = 60\n\
                 logfile = {log}\n",
                host = settings.server_host,
                sport = settings.server_port,
                users = users.display(),
                clients = settings.max_client_conn,
                pool = settings.default_pool_size,
                log = dir.join("pgbouncer.log").display(),
            ),
        )?;
        let mut cmd = Command::new(PGBOUNCER);
        if is_root() {
            // It reads its files and writes its log as that user.
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
        let mut bouncer = PgBouncer { child, dir, port };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Ok(bouncer);
            }
            if let Ok(Some(status)) = bouncer.child.try_wait() {
                anyhow::bail!("pgbouncer exited ({status}): {}", bouncer.log());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "pgbouncer did not listen within 30 s: {}",
                bouncer.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `url` (a database on the server behind it) with its host and port replaced by the
    /// pooler's.
    pub fn url(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).expect("a database URL");
        u.set_host(Some("127.0.0.1")).expect("host");
        u.set_port(Some(self.port)).expect("port");
        u.to_string()
    }

    /// What PgBouncer logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default()
    }

    /// An admin-console command (`SHOW CLIENTS`, `SHOW POOLS`) through `psql`: one map from
    /// column name to value per row.
    pub fn show(&self, what: &str) -> anyhow::Result<Vec<std::collections::HashMap<String, String>>> {
        let out = Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "root", "-d", "pgbouncer"])
            .args(["-X", "-A", "-F", "\t", "-P", "footer=off", "-c", &format!("SHOW {what}")])
            .output()
            .context("running psql against the admin console")?;
        anyhow::ensure!(out.status.success(), "SHOW {what}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let mut lines = text.lines();
        let header: Vec<String> = lines.next().unwrap_or_default().split('\t').map(str::to_owned).collect();
        Ok(lines
            .map(|l| header.iter().cloned().zip(l.split('\t').map(str::to_owned)).collect())
            .collect())
    }

    /// Client connections per `application_name` (and per database) at this moment.
    pub fn clients_by_application(&self, database: &str) -> anyhow::Result<std::collections::HashMap<String, usize>> {
        let mut counts = std::collections::HashMap::new();
        for row in self.show("CLIENTS")? {
            if row.get("database").map(String::as_str) == Some(database) {
                *counts.entry(row.get("application_name").cloned().unwrap_or_default()).or_default() += 1;
            }
        }
        Ok(counts)
    }
}

/// Established TCP connections to `127.0.0.1:port` per client process id at this moment (read
/// with `ss -tnp`; as root it sees every process).
pub fn connections_per_pid(port: u16) -> anyhow::Result<std::collections::HashMap<u32, usize>> {
    let out = Command::new("ss")
        .args(["-tnpH", "state", "established", &format!("( dport = :{port} )")])
        .output()
        .context("running ss")?;
    anyhow::ensure!(out.status.success(), "ss: {}", String::from_utf8_lossy(&out.stderr));
    let mut counts = std::collections::HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(pid) = line
            .split("pid=")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|p| p.parse::<u32>().ok())
        {
            *counts.entry(pid).or_default() += 1;
        }
    }
    Ok(counts)
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
