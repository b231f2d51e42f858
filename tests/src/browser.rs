//! Debian's headless Chromium driven over chromedriver (fantoccini, WebDriver), for the
//! dashboard's and the own page's browser tests. When `/usr/bin/chromium` or
//! `/usr/bin/chromedriver` is missing, [`Driver::start`] runs `.ci/setup-browser` to install
//! them, and fails saying so if that cannot: a browser test never skips.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, ensure};
use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};
use tokio::process::Command;

use crate::wait::try_wait_until;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The ceiling of waiting for chromedriver: generous, the machine may be busy compiling.
const LONG: Duration = Duration::from_secs(90);

/// Where a test's screenshots go: `<target dir>/test-artifacts/<name>`. `tmpdir` is the test's
/// `env!("CARGO_TARGET_TMPDIR")`.
pub fn artifacts(tmpdir: &str, name: &str) -> PathBuf {
    let tmp = Path::new(tmpdir);
    tmp.parent().unwrap_or(tmp).join("test-artifacts").join(name)
}

/// chromedriver on a free loopback port, in its own process group so that the browsers it
/// starts end with it (killed on drop).
pub struct Driver {
    child: tokio::process::Child,
    url: String,
    profile: PathBuf,
}

impl Driver {
    /// Starts chromedriver (installing Debian's Chromium first when it is missing, as
    /// `.ci/run` does, so the README's test command works on a fresh machine).
    pub async fn start() -> anyhow::Result<Driver> {
        if ![CHROMIUM, CHROMEDRIVER].iter().all(|b| Path::new(b).exists()) {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/setup-browser");
            let _ = std::process::Command::new("bash").arg(script).status();
        }
        for bin in [CHROMIUM, CHROMEDRIVER] {
            ensure!(
                Path::new(bin).exists(),
                "{bin} is missing: the browser tests need Debian's chromium and chromium-driver; run `.ci/setup-browser` (as root) to install them"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("starting {CHROMEDRIVER}"))?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        try_wait_until("chromedriver to answer /status", LONG, || {
            let (http, url) = (&http, &url);
            async move {
                Ok(match http.get(format!("{url}/status")).send().await {
                    Ok(r) if r.status().is_success() => Some(()),
                    _ => None,
                })
            }
        })
        .await?;
        let profile = std::env::temp_dir().join(format!("dashlight-chromium-{}-{port}", std::process::id()));
        Ok(Driver { child, url, profile })
    }

    /// A new headless Chromium session with its own fresh profile and this window size
    /// (`(1280, 1000)` for a desktop, `(430, 1400)` for a phone).
    pub async fn browser(&self, (width, height): (u32, u32)) -> anyhow::Result<Client> {
        let _ = std::fs::remove_dir_all(&self.profile);
        std::fs::create_dir_all(&self.profile)?;
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                    "--disable-dev-shm-usage", format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", self.profile.display()),
                ],
            },
        });
        let Value::Object(caps) = caps else { unreachable!() };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .context("starting Chromium through chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and any Chromium it left behind.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
