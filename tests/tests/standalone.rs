//! The programs as someone who installed them runs them: started from an empty folder, far from
//! the source tree, they carry everything they serve or render (notification templates, the
//! dashboard's and the own page's templates and assets, the service worker, the demo school), and
//! their logs hold no colour escape codes when they go to a pipe rather than a terminal.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use dashlight_tests::{bins, db::TestDb};

const TOKEN: &str = "standalone-test-token-0123456789abcdefghijkl";

/// An empty folder of its own under the system's temporary folder, removed on drop.
struct EmptyDir(PathBuf);

impl EmptyDir {
    fn new(name: &str) -> EmptyDir {
        let dir = std::env::temp_dir().join(format!("dashlight-standalone-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        EmptyDir(dir)
    }
}

impl Drop for EmptyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Everything a process writes to stdout and stderr, read by two threads as it comes.
#[derive(Clone, Default)]
struct Output(Arc<Mutex<Vec<u8>>>);

impl Output {
    fn capture(child: &mut Child) -> Output {
        let out = Output::default();
        let readers: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().expect("stdout piped")),
            Box::new(child.stderr.take().expect("stderr piped")),
        ];
        for mut r in readers {
            let buf = out.0.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = r.read(&mut chunk) {
                    if n == 0 {
                        break;
                    }
                    buf.lock().unwrap().extend_from_slice(&chunk[..n]);
                }
            });
        }
        out
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A command for `program` run from `dir` with nothing of the source tree in its environment.
fn command_in(program: &str, dir: &Path) -> std::process::Command {
    let mut cmd = bins::command(program);
    cmd.current_dir(dir)
        .env_remove("TEMPLATES_DIR")
        .env_remove("OUTBOX_DIR")
        .env_remove("INVOICE_DIR")
        .env_remove("ATTACHMENTS_DIR")
        .env_remove("PUBLIC_BASE_URL")
        .env_remove("LOG_FORMAT")
        .env_remove("NO_COLOR")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Waits (polling, with a ceiling) until `f` holds.
async fn wait_for(what: &str, timeout: Duration, out: &Output, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; the program printed:\n{}",
            out.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends SIGTERM and waits for the exit, killing the process after 60 s.
async fn terminate(child: &mut Child, out: &Output) -> std::process::ExitStatus {
    let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the program did not stop within 60 s of SIGTERM; it printed:\n{}", out.text());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn assert_no_colour(program: &str, text: &str) {
    assert!(
        !text.contains("\x1b["),
        "{program} wrote colour escape codes to a pipe:\n{}",
        text.replace('\x1b', "<ESC>")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dashlight_up_runs_from_an_empty_folder_and_logs_without_colour() {
    let db = TestDb::new().await;
    let dir = EmptyDir::new(&db.name);
    let port = free_port();
    let mut child = command_in("dashlight", &dir.0)
        .arg("up")
        .env("DATABASE_URL", &db.url)
        .env("ADMIN_API_ADDR", format!("127.0.0.1:{port}"))
        .env("ADMIN_API_TOKEN", TOKEN)
        .spawn()
        .expect("start dashlight up");
    let out = Output::capture(&mut child);
    wait_for("dashlight up to come up", Duration::from_secs(180), &out, async || {
        out.text().contains("Ctrl-C stops everything.")
    })
    .await;

    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    // (0, error) while nothing listens yet: the API starts after the banner is printed.
    let get = async |path: &str| match http.get(format!("{base}{path}")).bearer_auth(TOKEN).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    };
    wait_for("the API to answer", Duration::from_secs(60), &out, async || {
        get("/readyz").await.0 == 200
    })
    .await;
    // Pages and assets compiled into the admin API.
    let (status, sign_in) = get("/").await;
    assert!(status == 200 && sign_in.contains("<html"), "dashboard: {status} {sign_in}");
    let (status, sw) = get("/sw.js").await;
    assert!(status == 200 && sw.contains("push"), "sw.js: {status}");
    let (status, openapi) = get("/api/openapi.json").await;
    assert!(status == 200 && openapi.contains("\"openapi\""), "openapi: {status}");
    let printed = out.text();
    let own_page = printed
        .lines()
        .find_map(|l| {
            l.strip_prefix("own page of ")
                .and_then(|l| l.split_once(": "))
                .map(|(_, url)| url.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no own page link printed:\n{printed}"));
    let page = http.get(&own_page).send().await.expect("own page");
    assert_eq!(page.status().as_u16(), 200, "{own_page}");
    // The demo school's bookings produce emails, rendered with the built-in templates into
    // ./outbox of the empty folder.
    let outbox = dir.0.join("outbox");
    wait_for("an email in ./outbox", Duration::from_secs(120), &out, async || {
        std::fs::read_dir(&outbox)
            .map(|d| d.filter_map(Result::ok).any(|e| e.file_name().to_string_lossy().ends_with(".eml")))
            .unwrap_or(false)
    })
    .await;

    let status = terminate(&mut child, &out).await;
    // Let the reader threads take the last bytes.
    wait_for("the last line", Duration::from_secs(10), &out, async || {
        out.text().contains("stopped cleanly")
    })
    .await;
    let text = out.text();
    assert!(status.success(), "dashlight up exited with {status}:\n{text}");
    assert!(text.contains(" INFO "), "no log lines to check:\n{text}");
    assert_no_colour("dashlight up", &text);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_runs_from_an_empty_folder_and_an_override_template_still_fails_by_name() {
    let db = TestDb::new().await;
    let dir = EmptyDir::new(&db.name);

    let mut child = command_in("dashlight-worker", &dir.0)
        .env("DATABASE_URL", &db.url)
        .spawn()
        .expect("start the worker");
    let out = Output::capture(&mut child);
    wait_for("the worker to start", Duration::from_secs(120), &out, async || {
        out.text().contains("job wake-ups")
    })
    .await;
    let status = terminate(&mut child, &out).await;
    let text = out.text();
    assert!(status.success(), "the worker exited with {status}:\n{text}");
    assert_no_colour("dashlight-worker", &text);

    // TEMPLATES_DIR: a school's own copy of the templates, checked at start-up as before.
    let own = dir.0.join("our-templates");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../templates"), &own);
    std::fs::write(own.join("lesson_reminder/sms.hbs"), "See you {{#if}}").unwrap();
    let broken = command_in("dashlight-worker", &dir.0)
        .env("DATABASE_URL", &db.url)
        .env("TEMPLATES_DIR", &own)
        .output()
        .expect("run the worker");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&broken.stdout),
        String::from_utf8_lossy(&broken.stderr)
    );
    assert!(!broken.status.success(), "a broken template must stop the worker:\n{text}");
    assert!(text.contains("lesson_reminder/sms.hbs"), "the error must name the file:\n{text}");
    assert_no_colour("dashlight-worker", &text);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
