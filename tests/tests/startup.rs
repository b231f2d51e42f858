//! Faults and hostile input at start-up (docs/security.md), with the real programs as processes: the token `dashlight up` makes,
//! what it prints, and the settings that stop a program before it does anything unsafe.

use std::{
    io::{BufRead as _, BufReader},
    process::Stdio,
    sync::mpsc,
    time::Duration,
};

use dashlight_tests::{bins, db::TestDb};

/// Runs `dashlight up --no-demo` against the database at `url` until it says it is up, then
/// stops it with SIGTERM; returns what it printed to stdout.
fn run_up(url: &str, name: &str, token: Option<&str>) -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let outbox = std::env::temp_dir().join(format!("dashlight-up-{name}"));
    let mut cmd = bins::command("dashlight");
    cmd.arg("up")
        .arg("--no-demo")
        .current_dir(&root)
        .env("DATABASE_URL", url)
        .env("ADMIN_API_ADDR", "127.0.0.1:0")
        .env("OUTBOX_DIR", &outbox)
        .env("INVOICE_DIR", &outbox)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(t) = token {
        cmd.env("ADMIN_API_TOKEN", t);
    }
    let mut child = cmd.spawn().expect("start dashlight up");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut out = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(180);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                out.push_str(&line);
                out.push('\n');
                if line.contains("Ctrl-C stops everything") {
                    break;
                }
            }
            Err(_) => {
                let _ = child.kill();
                panic!("dashlight up did not come up; it printed:\n{out}");
            }
        }
    }
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let waited = (0..600).find_map(|_| match child.try_wait() {
        Ok(Some(s)) => Some(s),
        _ => {
            std::thread::sleep(Duration::from_millis(100));
            None
        }
    });
    if waited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn dashlight_up_generates_a_random_token_and_prints_only_that() {
    let db = TestDb::new().await;
    let (url, name) = (db.url.clone(), db.name.clone());
    let (first, second) = tokio::task::spawn_blocking({
        let (url, name) = (url.clone(), name.clone());
        move || (run_up(&url, &name, None), run_up(&url, &name, None))
    })
    .await
    .unwrap();
    let token_of = |out: &str| -> String {
        let line = out.lines().find(|l| l.contains("Bearer ")).unwrap_or_else(|| panic!("{out}"));
        assert!(line.contains("generated for this run"), "{line}");
        line.split("Bearer ").nth(1).unwrap().split(',').next().unwrap().to_owned()
    };
    let (a, b) = (token_of(&first), token_of(&second));
    for t in [&a, &b] {
        // 256 bits, base64url without padding.
        assert_eq!(t.len(), 43, "{t}");
        assert!(t.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'), "{t}");
        assert!(!t.starts_with("local-"), "not the old time-and-pid token: {t}");
    }
    assert_ne!(a, b, "a new token each run");

    // A token the operator set is never printed.
    let mine = "operator-chosen-token-0123456789abcdefghij";
    let out = tokio::task::spawn_blocking(move || run_up(&url, &name, Some(mine))).await.unwrap();
    assert!(!out.contains(mine), "{out}");
    assert!(out.contains("$ADMIN_API_TOKEN"), "{out}");
}

#[test]
fn short_tokens_and_clear_text_smtp_passwords_stop_the_programs() {
    // An unreachable database: a program that gets past its configuration fails on it instead.
    let db = "postgres://root@127.0.0.1:1/x";
    let out = bins::command("dashlight-admin-api")
        .env("DATABASE_URL", db)
        .env("ADMIN_API_TOKEN", "local-0123456789abcdef")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ADMIN_API_TOKEN") && err.contains("32"), "{err}");
    assert!(!err.contains("local-0123456789abcdef"), "the token is not echoed: {err}");

    for (url, refused) in [
        ("smtp://user:secret@mail.example.com:587", true),
        ("smtp://user:secret@mail.example.com:587?tls=opportunistic", true),
        ("smtp://user:secret@mail.example.com:587?tls=required", false),
        ("smtps://user:secret@mail.example.com", false),
        ("smtp://user:secret@127.0.0.1:2525", false),
        ("smtp://mail.example.com:25", false),
    ] {
        let out = bins::command("dashlight-worker")
            .env("DATABASE_URL", db)
            .env("SMTP_URL", url)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{url}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.contains("SMTP_URL"), refused, "{url}: {err}");
        assert!(!err.contains("secret"), "the password is not echoed: {err}");
    }

    let out = bins::command("dashlight-worker")
        .env("DATABASE_URL", db)
        .env("SMS_MAX_SEGMENTS", "0")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("SMS_MAX_SEGMENTS"));
    let out = bins::command("dashlight-worker")
        .env("DATABASE_URL", db)
        .env("PUSH_ALLOW_PRIVATE_ENDPOINTS", "maybe")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("PUSH_ALLOW_PRIVATE_ENDPOINTS"));
}
