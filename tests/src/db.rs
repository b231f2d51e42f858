//! A fresh, migrated database per test. The first test of a run migrates a template database
//! (keyed by a hash of the migrations, coordinated across test processes with an advisory lock);
//! every test then clones it with `CREATE DATABASE … TEMPLATE`, which takes milliseconds.
//! `DATABASE_URL` (default `postgres://root@127.0.0.1:5432/postgres`) names the server.

use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool, postgres::PgConnectOptions};
use tokio::sync::OnceCell;

static TEMPLATE: OnceCell<String> = OnceCell::const_new();
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The server URL tests use (its database part is replaced).
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://root@127.0.0.1:5432/postgres".into())
}

fn with_db(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("TEST_DATABASE_URL is a URL");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

async fn admin() -> PgConnection {
    let opts: PgConnectOptions = with_db(&server_url(), "postgres").parse().expect("url");
    if let Ok(c) = PgConnection::connect_with(&opts).await {
        return c;
    }
    // A fresh machine may have its cluster stopped: start it once, as .ci/run does.
    start_machine_cluster();
    for _ in 0..60 {
        if let Ok(c) = PgConnection::connect_with(&opts).await {
            return c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    panic!(
        "Postgres is not reachable at {} (set TEST_DATABASE_URL or start it; see docs/configuration.md)",
        server_url()
    )
}

fn start_machine_cluster() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(entries) = std::fs::read_dir("/etc/postgresql") {
            for v in entries.flatten() {
                let _ = std::process::Command::new("pg_ctlcluster")
                    .args(["--skip-systemctl-redirect", &v.file_name().to_string_lossy(), "main", "start"])
                    .status();
            }
        }
    });
}

async fn template() -> &'static str {
    TEMPLATE
        .get_or_init(|| async {
            let mut hash: u64 = 0xcbf29ce484222325;
            for m in dashlight_core::db::migrator().iter() {
                for b in m.checksum.iter().chain(m.version.to_le_bytes().iter()) {
                    hash = (hash ^ *b as u64).wrapping_mul(0x100000001b3);
                }
            }
            let name = format!("dashlight_tpl_{:012x}", hash & 0xffff_ffff_ffff);
            let mut conn = admin().await;
            sqlx::query("SELECT pg_advisory_lock(727274)")
                .execute(&mut conn)
                .await
                .expect("lock");
            let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&name)
                .fetch_one(&mut conn)
                .await
                .expect("query");
            if !exists {
                let building = format!("{name}_building");
                sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {building}")))
                    .execute(&mut conn)
                    .await
                    .expect("drop");
                sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {building}")))
                    .execute(&mut conn)
                    .await
                    .expect("create template");
                let pool = PgPool::connect(&with_db(&server_url(), &building)).await.expect("connect template");
                dashlight_core::db::migrate(&pool).await.expect("migrate template");
                pool.close().await;
                sqlx::query(AssertSqlSafe(format!("ALTER DATABASE {building} RENAME TO {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("rename");
            }
            sqlx::query("SELECT pg_advisory_unlock(727274)")
                .execute(&mut conn)
                .await
                .expect("unlock");
            name
        })
        .await
}

/// A test's own database, dropped when the value is dropped.
pub struct TestDb {
    /// Its name.
    pub name: String,
    /// Its URL.
    pub url: String,
    /// A pool on it.
    pub pool: PgPool,
}

impl TestDb {
    /// Creates a fresh migrated database.
    pub async fn new() -> TestDb {
        let tpl = template().await;
        let name = format!(
            "dashlight_t_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand_suffix()
        );
        let mut conn = admin().await;
        // CREATE … TEMPLATE fails while another session is connected to the template; retry briefly.
        let mut tries = 0;
        loop {
            match sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name} TEMPLATE {tpl}")))
                .execute(&mut conn)
                .await
            {
                Ok(_) => break,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!("template busy: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => panic!("cannot create test database: {e}"),
            }
        }
        let url = with_db(&server_url(), &name);
        // The programs' own connection options (plans made for the data of the moment).
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(20)
            .connect_with(
                dashlight_core::db::connect_options(&url, dashlight_core::db::Pooler::Session, "dashlight-tests").expect("test db url"),
            )
            .await
            .expect("connect test db");
        TestDb { name, url, pool }
    }

    /// A configuration pointing at this database, every channel to a fresh outbox, the admin
    /// API's token [`crate::api::TOKEN`].
    pub fn config(&self) -> dashlight_core::Config {
        let mut c = dashlight_core::Config::for_database(&self.url);
        c.admin_api_token = Some(crate::api::TOKEN.into());
        let dir = std::env::temp_dir().join(format!("dashlight-test-{}", self.name));
        c.outbox_dir = dir.join("outbox");
        c.invoice_dir = dir.join("invoices");
        c.attachments_dir = dir.join("attachments");
        c
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        % 100_000
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop the database from a helper thread with its own runtime: Drop cannot await, and
        // the test's pool belongs to the test's runtime. FORCE ends the pool's connections.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
            rt.block_on(async move {
                let mut conn = admin().await;
                let _ = sqlx::query(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")))
                    .execute(&mut conn)
                    .await;
            });
        })
        .join();
    }
}
