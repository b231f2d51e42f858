//! The programs as production runs them, behind PgBouncer 1.18 in transaction mode
//! (`DATABASE_POOLER=transaction`): real processes, a real pooler (`dashlight_tests::pooler`),
//! the loopback providers. Every wait is on a condition with a generous ceiling.

use std::time::Duration;

use dashlight_tests::{
    api::{TOKEN, lesson_start},
    bins,
    pooler::{PgBouncer, PoolerSettings},
    proc::{self, WorkerProcess},
    wait::try_wait_until,
    world::World,
};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(120);

async fn scalar(w: &World, sql: &str) -> i64 {
    scalar_on(w.pool(), sql).await
}

async fn scalar_on(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// The admin API as a process through the pooler, answering `/readyz` 200.
async fn spawn_api(w: &World, env: &[(&str, &str)]) -> (WorkerProcess, String) {
    spawn_api_tagged(w, "pooled-api", env).await
}

async fn spawn_api_tagged(w: &World, tag: &str, env: &[(&str, &str)]) -> (WorkerProcess, String) {
    let addr = free_addr();
    let mut all = env.to_vec();
    all.extend([("ADMIN_API_ADDR", addr.as_str()), ("ADMIN_API_TOKEN", TOKEN)]);
    let api = proc::spawn_program(w, "dashlight-admin-api", tag, &all);
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    try_wait_until("the API ready through the pooler", LONG, || async {
        let ok = match http.get(format!("{base}/readyz")).send().await {
            Ok(r) => r.status() == 200,
            Err(_) => false,
        };
        Ok(ok.then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\napi output:\n{}", api.output()));
    (api, base)
}

async fn post(base: &str, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// No program logged a prepared-statement or protocol error, and each is still running.
fn assert_healthy(procs: &mut [&mut WorkerProcess]) {
    for p in procs.iter_mut() {
        let out = p.output();
        assert!(
            !out.contains("prepared statement") && !out.contains("unsupported startup parameter"),
            "a session assumption broke through the pooler:\n{out}"
        );
        assert!(p.child.try_wait().unwrap().is_none(), "a program exited:\n{out}");
    }
}

/// (1) API, worker and scheduler through PgBouncer in transaction mode: a booking made through
/// the API is confirmed by email, the scheduler's ticks are claimed and run by the worker, and
/// no process holds more pooler connections than `DATABASE_MAX_CONNECTIONS`. One worker wakes
/// on `LISTEN` over `DATABASE_DIRECT_URL`, the other polls.
#[tokio::test]
async fn api_worker_and_scheduler_work_through_pgbouncer_in_transaction_mode() {
    let w = World::start().await;
    let bouncer = PgBouncer::start(&PoolerSettings::for_url(&w.db.url, 200, 6)).await.unwrap();
    let direct = proc::database_url_with_password(&w);
    let pooled = bouncer.url(&direct);
    let common = [
        ("DATABASE_URL", pooled.as_str()),
        ("DATABASE_POOLER", "transaction"),
        ("DATABASE_MAX_CONNECTIONS", "4"),
    ];
    let (mut api, base) = spawn_api(&w, &common).await;
    let mut listening = proc::spawn_program(
        &w,
        "dashlight-worker",
        "pooled-worker-listen",
        &[&common[..], &[("DATABASE_DIRECT_URL", direct.as_str())]].concat(),
    );
    let mut polling = proc::spawn_program(&w, "dashlight-worker", "pooled-worker-poll", &common);
    let mut scheduler = proc::spawn_program(
        &w,
        "dashlight-scheduler",
        "pooled-scheduler",
        &[&common[..], &[("SCHEDULE_ANALYTICS_ROLLUP", "* * * * * *")]].concat(),
    );

    let (status, student) = post(
        &base,
        "/api/users",
        json!({"role": "student", "email": "ada@school.test", "first_name": "Ada", "last_name": "Learner", "timezone": "Europe/London"}),
    )
    .await;
    assert_eq!(status, 201, "{student}");
    let (status, instructor) = post(&base, "/api/users", json!({"role": "instructor", "email": "grace@school.test", "phone": "+447700900101", "first_name": "Grace", "last_name": "Teacher", "timezone": "Europe/London", "instructor": {"license_number": "ADI-grace"}})).await;
    assert_eq!(status, 201, "{instructor}");
    let start = lesson_start(3);
    for _ in 0..3 {
        // Several bookings, so that statements of different shapes interleave in the pooler.
        let (status, body) = post(&base, "/api/users", json!({"role": "student", "email": format!("s{}@school.test", rand_u32()), "first_name": "Extra", "last_name": "Learner", "timezone": "Europe/London"})).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, booking) = post(
        &base,
        "/api/bookings",
        json!({"student_id": student["student_id"], "instructor_id": instructor["instructor_id"], "start_time": start.to_rfc3339(), "end_time": (start + chrono::Duration::hours(1)).to_rfc3339()}),
    )
    .await;
    assert_eq!(status, 201, "booking through the pooler: {booking}");

    let mails = w.smtp.wait_for_messages(1, LONG).await.unwrap();
    assert!(
        mails.iter().any(|m| m.rcpt_to == vec!["ada@school.test".to_owned()]),
        "the student's confirmation was sent"
    );
    try_wait_until("every delivery of the booking recorded", LONG, || async {
        let open = scalar(
            &w,
            "SELECT count(*) FROM notification_deliveries WHERE status NOT IN ('sent', 'skipped', 'dead', 'failed')",
        )
        .await;
        let sent = scalar(&w, "SELECT count(*) FROM notification_deliveries WHERE status = 'sent'").await;
        Ok((open == 0 && sent >= 2).then_some(()))
    })
    .await
    .unwrap();
    // The scheduler claims ticks and the workers run them, all through the pooler.
    try_wait_until("three ticks claimed and run", LONG, || async {
        let done = scalar(
            &w,
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'dashlight.periodic' AND status = 'Done'",
        )
        .await;
        Ok((done >= 3).then_some(()))
    })
    .await
    .unwrap();
    let ticks = scalar(&w, "SELECT count(*) FROM scheduler_ticks").await;
    let periodic = scalar(&w, "SELECT count(*) FROM apalis.jobs WHERE job_type = 'dashlight.periodic'").await;
    assert_eq!(ticks, periodic, "one periodic job per claimed tick");

    let clients = bouncer.clients_by_application(&w.db.name).unwrap();
    for (app, n) in &clients {
        assert!(*n <= 4 * 2, "{app}: {n} client connections (two workers share the name, 4 each)");
        if app != "dashlight-worker" {
            assert!(*n <= 4, "{app}: {n} client connections > DATABASE_MAX_CONNECTIONS=4");
        }
    }
    assert!(
        clients.keys().any(|a| a == "dashlight-admin-api") && clients.keys().any(|a| a == "dashlight-scheduler"),
        "the programs connect through the pooler: {clients:?}"
    );
    // The LISTEN connection goes to the server directly, never through the pooler.
    assert!(!clients.contains_key("dashlight-worker-listen"), "{clients:?}");
    let direct_listen: i64 = scalar(
        &w,
        &format!(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND application_name = 'dashlight-worker-listen'",
            w.db.name
        ),
    )
    .await;
    assert!(direct_listen >= 1, "the listening worker holds a direct LISTEN connection");
    assert_healthy(&mut [&mut api, &mut listening, &mut polling, &mut scheduler]);
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    );
    h.finish() as u32
}

/// `dashlight migrate` refuses a transaction pooler without `DATABASE_DIRECT_URL` (naming it)
/// and migrates through `DATABASE_DIRECT_URL` when given; a bad `DATABASE_POOLER` or a direct
/// URL without the pooler setting stops a program at start-up naming the variable.
#[tokio::test]
async fn migrate_refuses_the_pooler_and_uses_the_direct_url() {
    let w = World::start().await;
    let bouncer = PgBouncer::start(&PoolerSettings::for_url(&w.db.url, 20, 2)).await.unwrap();
    let direct = proc::database_url_with_password(&w);
    let pooled = bouncer.url(&direct);
    let run = |env: &[(&str, &str)]| {
        let mut cmd = bins::command("dashlight");
        cmd.arg("migrate");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let refused = run(&[("DATABASE_URL", &pooled), ("DATABASE_POOLER", "transaction")]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "migrating through the pooler is refused");
    assert!(err.contains("DATABASE_DIRECT_URL"), "the refusal names DATABASE_DIRECT_URL: {err}");
    let ok = run(&[
        ("DATABASE_URL", &pooled),
        ("DATABASE_POOLER", "transaction"),
        ("DATABASE_DIRECT_URL", &direct),
    ]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(!String::from_utf8_lossy(&ok.stdout).contains(DB_PASSWORD_MARK));
    for (env, var) in [
        (
            vec![("DATABASE_URL", pooled.as_str()), ("DATABASE_POOLER", "statement")],
            "DATABASE_POOLER",
        ),
        (
            vec![("DATABASE_URL", direct.as_str()), ("DATABASE_DIRECT_URL", direct.as_str())],
            "DATABASE_DIRECT_URL",
        ),
        (
            vec![("DATABASE_URL", direct.as_str()), ("DATABASE_MAX_CONNECTIONS", "1")],
            "DATABASE_MAX_CONNECTIONS",
        ),
    ] {
        let out = run(&env);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}: {err}");
        assert!(err.contains(var), "the error names {var}: {err}");
    }
}

const DB_PASSWORD_MARK: &str = proc::DB_PASSWORD;

/// The driver through the pooler: many statements of different shapes from a pool of several
/// connections, concurrently, with the programs' pooler options. Upstream sqlx-postgres 0.9
/// fails this with `prepared statement "sqlx_s_1" already exists` / `does not exist` (a named
/// statement prepared in one round trip and bound in the next, on another server connection);
/// the vendored patch runs each statement under one Sync (vendor/README.md).
#[tokio::test]
async fn statements_of_every_shape_run_concurrently_through_the_pooler() {
    let w = World::start().await;
    let bouncer = PgBouncer::start(&PoolerSettings::for_url(&w.db.url, 50, 3)).await.unwrap();
    let opts =
        dashlight_core::db::connect_options(&bouncer.url(&w.db.url), dashlight_core::db::Pooler::Transaction, "driver-check").unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(12)
        .connect_with(opts)
        .await
        .unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..12i64 {
        let pool = pool.clone();
        tasks.spawn(async move {
            for i in 0..200i64 {
                match (t + i) % 3 {
                    0 => {
                        let v: i64 = sqlx::query_scalar("SELECT $1::int8 + 1").bind(i).fetch_one(&pool).await?;
                        assert_eq!(v, i + 1);
                    }
                    1 => {
                        let (a, b, c): (i64, String, bool) = sqlx::query_as("SELECT $1::int8, $2::text, $3::bool")
                            .bind(i)
                            .bind(format!("row {i}"))
                            .bind(i % 2 == 0)
                            .fetch_one(&pool)
                            .await?;
                        assert_eq!((a, b.as_str(), c), (i, format!("row {i}").as_str(), i % 2 == 0));
                    }
                    _ => {
                        let mut tx = pool.begin().await?;
                        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM generate_series(1, $1::int8)")
                            .bind(i)
                            .fetch_one(&mut *tx)
                            .await?;
                        assert_eq!(n, i);
                        tx.commit().await?;
                    }
                }
            }
            Ok::<_, sqlx::Error>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap_or_else(|e| panic!("a statement failed through the pooler: {e}"));
    }
}

/// `n` students (`<tag>-<i>@load.test`), one email-only notification each due now, in one
/// transaction (as `reliability.rs` makes its bursts).
async fn email_burst(pool: &sqlx::PgPool, n: i64, tag: &str) -> Vec<i64> {
    use dashlight_core::{
        kinds::Kind,
        notify::{self, NewNotification},
    };
    let users: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO users (email, role, first_name, last_name, timezone)
         SELECT $2 || '-' || i || '@load.test', 'student', 'Learner' || i, 'Load', 'Europe/London' FROM generate_series(1, $1) i RETURNING id",
    )
    .bind(n)
    .bind(tag)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut tx = pool.begin().await.unwrap();
    let mut ids = Vec::new();
    let now = chrono::Utc::now();
    for (i, u) in users.into_iter().enumerate() {
        // The steady ones ("steady" tag) fall due one a second from now.
        let due = if tag == "steady" {
            now + chrono::Duration::seconds(i as i64 + 1)
        } else {
            now
        };
        let mut nn = NewNotification::to_user(Kind::PackageLow, u, format!("{tag}:{u}"), due);
        nn.produced_at = now;
        nn.data = json!({"package": {"name": "Ten lessons", "lessons_remaining": 1, "expires_at": "2031-01-01T00:00:00Z"}});
        ids.push(notify::create(&mut tx, nn).await.unwrap().unwrap());
    }
    tx.commit().await.unwrap();
    ids
}

/// (2) Scale-out through PgBouncer: four worker processes (two waking on `LISTEN` over
/// `DATABASE_DIRECT_URL`, two polling), two schedulers and the API, all with
/// `DATABASE_MAX_CONNECTIONS=4`, drain a burst of 2,000 emails plus ten steady ones due a second
/// apart while the schedulers race over a tick every second. Every notification is sent exactly
/// once, every tick runs once, the work is shared (each worker sends at least 1/32 of the
/// emails, none more than half), and no process ever holds more than 4 connections to the
/// pooler (sampled with `ss` throughout).
#[tokio::test]
async fn four_workers_two_schedulers_and_the_api_share_a_burst_through_pgbouncer() {
    let w = World::start().await;
    let bouncer = PgBouncer::start(&PoolerSettings::for_url(&w.db.url, 200, 10)).await.unwrap();
    let direct = proc::database_url_with_password(&w);
    let pooled = bouncer.url(&direct);
    let common = [
        ("DATABASE_URL", pooled.as_str()),
        ("DATABASE_POOLER", "transaction"),
        ("DATABASE_MAX_CONNECTIONS", "4"),
        ("WORKER_BATCH_SIZE", "100"),
        ("WORKER_CONCURRENCY", "32"),
        ("SCHEDULE_ANALYTICS_ROLLUP", "* * * * * *"),
    ];
    let listen = [&common[..], &[("DATABASE_DIRECT_URL", direct.as_str())]].concat();
    let (api, _base) = spawn_api(&w, &common).await;
    let mut procs = vec![api];
    for (i, env) in [&listen, &listen, &common.to_vec(), &common.to_vec()].into_iter().enumerate() {
        procs.push(proc::spawn_program(&w, "dashlight-worker", &format!("scale-worker-{i}"), env));
    }
    for i in 0..2 {
        procs.push(proc::spawn_program(
            &w,
            "dashlight-scheduler",
            &format!("scale-scheduler-{i}"),
            &common,
        ));
    }
    try_wait_until("four notification workers registered", LONG, || async {
        let n = scalar(&w, "SELECT count(*) FROM apalis.workers WHERE id LIKE '%-notifications'").await;
        Ok((n >= 4).then_some(()))
    })
    .await
    .unwrap();

    // Sample every process's connections to the pooler while the burst drains.
    let pids: Vec<u32> = procs.iter().map(|p| p.child.id()).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (stop, port) = (stop.clone(), bouncer.port);
        tokio::spawn(async move {
            let mut most: std::collections::HashMap<u32, usize> = Default::default();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for (pid, n) in dashlight_tests::pooler::connections_per_pid(port).unwrap() {
                    let m = most.entry(pid).or_default();
                    *m = (*m).max(n);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            most
        })
    };

    let total = 2000usize;
    let steady = 10usize;
    email_burst(w.pool(), total as i64, "burst").await;
    email_burst(w.pool(), steady as i64, "steady").await;
    w.smtp.wait_for_messages(total + steady, Duration::from_secs(300)).await.unwrap();
    try_wait_until("every notification recorded sent", LONG, || async {
        let open = scalar(&w, "SELECT count(*) FROM notification_deliveries WHERE status <> 'sent'").await;
        let sent = scalar(&w, "SELECT count(*) FROM notification_deliveries WHERE status = 'sent'").await;
        Ok((open == 0 && sent == (total + steady) as i64).then_some(()))
    })
    .await
    .unwrap();
    try_wait_until("five ticks claimed and run", LONG, || async {
        let done = scalar(
            &w,
            "SELECT count(*) FROM apalis.jobs WHERE job_type = 'dashlight.periodic' AND status = 'Done'",
        )
        .await;
        Ok((done >= 5).then_some(()))
    })
    .await
    .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let most = sampler.await.unwrap();

    // Exactly once: one sent attempt per delivery, one email per recipient.
    let twice = scalar(&w, "SELECT count(*) FROM (SELECT delivery_id FROM delivery_attempts WHERE outcome = 'sent' GROUP BY delivery_id HAVING count(*) > 1) x").await;
    assert_eq!(twice, 0, "no delivery sent twice");
    let mails = w.smtp.messages();
    let mut rcpts: Vec<String> = mails.iter().flat_map(|m| m.rcpt_to.clone()).collect();
    rcpts.sort();
    let all = rcpts.len();
    rcpts.dedup();
    assert_eq!((all, rcpts.len()), (total + steady, total + steady), "every email exactly once");
    // The steady ones left at or after their due time.
    let early = scalar(
        &w,
        "SELECT count(*) FROM notifications n JOIN notification_deliveries d ON d.notification_id = n.id
         JOIN delivery_attempts a ON a.delivery_id = d.id WHERE n.dedupe_key LIKE 'steady:%' AND a.started_at < n.due_at",
    )
    .await;
    assert_eq!(early, 0, "no steady notification sent before it was due");
    // Every tick once.
    let ticks = scalar(&w, "SELECT count(*) FROM scheduler_ticks").await;
    let periodic = scalar(&w, "SELECT count(*) FROM apalis.jobs WHERE job_type = 'dashlight.periodic'").await;
    assert_eq!(ticks, periodic, "one periodic job per claimed tick");
    let rerun = scalar(
        &w,
        "SELECT count(*) FROM apalis.jobs WHERE job_type = 'dashlight.periodic' AND attempts > 1",
    )
    .await;
    assert_eq!(rerun, 0, "no tick ran twice");
    // The work is shared.
    let per_worker: Vec<(String, i64)> =
        sqlx::query_as("SELECT worker, count(*) FROM delivery_attempts WHERE outcome = 'sent' GROUP BY worker ORDER BY 2")
            .fetch_all(w.pool())
            .await
            .unwrap();
    let sent = (total + steady) as i64;
    assert_eq!(per_worker.len(), 4, "all four workers sent: {per_worker:?}");
    for (worker, n) in &per_worker {
        assert!(
            *n * 32 >= sent && *n * 2 <= sent,
            "{worker} sent {n} of {sent}: outside [1/32, 1/2]; {per_worker:?}"
        );
    }
    // No process above DATABASE_MAX_CONNECTIONS through the pooler.
    for pid in &pids {
        let n = most.get(pid).copied().unwrap_or(0);
        assert!(n <= 4, "process {pid} held {n} connections to the pooler (> 4): {most:?}");
    }
    assert!(
        pids.iter().filter(|p| most.contains_key(p)).count() >= 6,
        "the sampler saw the programs: {most:?}"
    );
    eprintln!("sends per worker: {per_worker:?}; most pooler connections per process: {most:?}");
    let mut refs: Vec<&mut WorkerProcess> = procs.iter_mut().collect();
    assert_healthy(&mut refs);
}

/// `/readyz`'s status, each answer bounded (a hang is a failure, not a wait).
async fn readyz(base: &str) -> u16 {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    match http.get(format!("{base}/readyz")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(e) => panic!("/readyz did not answer within 10 s: {e}"),
    }
}

/// How long the database stays down in the restart tests: a restart or a failover.
const OUTAGE: Duration = Duration::from_secs(12);

/// (3) A Postgres restart mid-burst, against a private cluster (`dashlight_tests::pgcluster`),
/// the programs connected directly (`pooled = false`) or through PgBouncer in transaction mode
/// (`pooled = true`; PgBouncer stays up, the server behind it restarts). The server stops for
/// [`OUTAGE`] while two workers drain 2,000 emails; `/readyz` answers 503 throughout the outage
/// and 200 within 30 s of the server's return; every email is then sent, duplicates at most
/// the sends in flight (2 workers × `WORKER_CONCURRENCY`), each worker sends again after the
/// restart, a tick after the restart is claimed and run, and no program exited.
async fn restart_mid_burst(pooled: bool) {
    let w = World::start().await;
    let pg = dashlight_tests::pgcluster::PrivateCluster::start().unwrap();
    let direct = pg.url("dashlight_restart");
    let migrated = bins::command("dashlight")
        .arg("migrate")
        .env("DATABASE_URL", &direct)
        .output()
        .unwrap();
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&direct)
        .await
        .unwrap();
    let bouncer = if pooled {
        Some(PgBouncer::start(&PoolerSettings::for_url(&direct, 200, 10)).await.unwrap())
    } else {
        None
    };
    let url = bouncer.as_ref().map_or(direct.clone(), |b| b.url(&direct));
    let mut env = vec![
        ("DATABASE_URL", url.as_str()),
        ("WORKER_CONCURRENCY", "32"),
        ("WORKER_BATCH_SIZE", "100"),
        ("SCHEDULE_ANALYTICS_ROLLUP", "* * * * * *"),
    ];
    if pooled {
        env.extend([
            ("DATABASE_POOLER", "transaction"),
            ("DATABASE_DIRECT_URL", direct.as_str()),
            ("DATABASE_MAX_CONNECTIONS", "6"),
        ]);
    }
    let tag = if pooled { "restart-pooled" } else { "restart-direct" };
    let (api, base) = spawn_api_tagged(&w, &format!("{tag}-api"), &env).await;
    let mut procs = vec![api];
    for i in 0..2 {
        procs.push(proc::spawn_program(&w, "dashlight-worker", &format!("{tag}-worker-{i}"), &env));
    }
    procs.push(proc::spawn_program(&w, "dashlight-scheduler", &format!("{tag}-scheduler"), &env));
    try_wait_until("two notification workers registered", LONG, || async {
        let n = scalar_on(&pool, "SELECT count(*) FROM apalis.workers WHERE id LIKE '%-notifications'").await;
        Ok((n >= 2).then_some(()))
    })
    .await
    .unwrap();

    let total = 2000usize;
    email_burst(&pool, total as i64, "burst").await;
    w.smtp.wait_for_messages(200, LONG).await.unwrap();

    // The server goes away mid-burst.
    pg.stop().unwrap();
    let down = tokio::time::Instant::now();
    try_wait_until("/readyz 503 once the database is down", LONG, || async {
        Ok((readyz(&base).await == 503).then_some(()))
    })
    .await
    .unwrap();
    while down.elapsed() < OUTAGE {
        assert_eq!(readyz(&base).await, 503, "/readyz tells the truth while the database is down");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let sent_during_outage = w.smtp.messages().len();
    pg.start_again().unwrap();
    let back = tokio::time::Instant::now();
    let back_at = chrono::Utc::now();
    try_wait_until("/readyz 200 after the database is back", LONG, || async {
        Ok((readyz(&base).await == 200).then_some(()))
    })
    .await
    .unwrap();
    let ready_after = back.elapsed();
    assert!(
        ready_after < Duration::from_secs(30),
        "ready {ready_after:?} after the database's return"
    );

    // Nothing lost.
    let mails = w.smtp.wait_for_messages(total, Duration::from_secs(300)).await;
    let all_sent = try_wait_until("every delivery recorded sent", Duration::from_secs(300), || async {
        let sent = scalar_on(&pool, "SELECT count(*) FROM notification_deliveries WHERE status = 'sent'").await;
        Ok((sent == total as i64).then_some(()))
    })
    .await;
    let logs: String = procs.iter().map(|p| format!("--- {:?}\n{}", p.log, p.output())).collect();
    mails.unwrap_or_else(|e| panic!("{e:#}\n{logs}"));
    all_sent.unwrap_or_else(|e| panic!("{e:#}\n{logs}"));
    let recovered_after = back.elapsed();
    // Nothing sent twice beyond the sends in flight at the outage.
    let mut rcpts: Vec<String> = w.smtp.messages().iter().flat_map(|m| m.rcpt_to.clone()).collect();
    rcpts.sort();
    let received = rcpts.len();
    rcpts.dedup();
    assert_eq!(rcpts.len(), total, "every email arrived");
    let duplicates = received - total;
    assert!(
        duplicates <= 2 * 32,
        "{duplicates} emails sent twice, more than the 64 sends in flight"
    );
    // Each worker sent again after the restart, and the scheduler's ticks were claimed and run.
    let workers_after = scalar_on(
        &pool,
        &format!(
            "SELECT count(DISTINCT worker) FROM delivery_attempts WHERE outcome = 'sent' AND finished_at > '{}'",
            back_at.to_rfc3339()
        ),
    )
    .await;
    let ticks_after = try_wait_until("a tick after the restart claimed and run", LONG, || async {
        let n = scalar_on(
            &pool,
            &format!(
                "SELECT (SELECT count(*) FROM scheduler_ticks WHERE tick_at > '{0}')
                    * (SELECT count(*) FROM apalis.jobs WHERE job_type = 'dashlight.periodic' AND status = 'Done' AND run_at > '{0}')",
                back_at.to_rfc3339()
            ),
        )
        .await;
        Ok((n >= 1).then_some(n))
    })
    .await;
    ticks_after.unwrap_or_else(|e| panic!("{e:#}\n{logs}"));
    eprintln!(
        "{tag}: {sent_during_outage} emails before the outage ended; ready {ready_after:?} and all sent {recovered_after:?} after the return; {duplicates} duplicates; {workers_after} workers sending after it"
    );
    assert_eq!(workers_after, 2, "both workers sent after the restart");
    let mut refs: Vec<&mut WorkerProcess> = procs.iter_mut().collect();
    for p in refs.iter_mut() {
        assert!(
            p.child.try_wait().unwrap().is_none(),
            "a program exited instead of recovering:\n{}",
            p.output()
        );
    }
    drop(bouncer);
}

#[tokio::test]
async fn a_postgres_restart_mid_burst_loses_nothing_and_every_program_recovers() {
    restart_mid_burst(false).await;
}

#[tokio::test]
async fn a_postgres_restart_behind_pgbouncer_loses_nothing_and_every_program_recovers() {
    restart_mid_burst(true).await;
}
