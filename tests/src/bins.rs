//! The workspace's programs as real processes: built once per test run with `cargo build`, then
//! started by path.

use std::{path::PathBuf, process::Command, sync::OnceLock};

static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// The folder holding the debug binaries (`target/debug`), built on first use.
pub fn bin_dir() -> PathBuf {
    BUILT
        .get_or_init(|| {
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
            let mut build = Command::new(cargo);
            // Not the variables cargo sets for this test process: build scripts that watch them
            // (ring's watches CARGO_MANIFEST_DIR) would run again, and everything above them be
            // rebuilt, once here and once more at the next `cargo test`.
            for (k, _) in std::env::vars() {
                if k.starts_with("CARGO_PKG_")
                    || k.starts_with("CARGO_BIN_")
                    || [
                        "CARGO_MANIFEST_DIR",
                        "CARGO_MANIFEST_PATH",
                        "CARGO_CRATE_NAME",
                        "CARGO_PRIMARY_PACKAGE",
                        "CARGO_TARGET_TMPDIR",
                    ]
                    .contains(&k.as_str())
                {
                    build.env_remove(k);
                }
            }
            let status = build
                .current_dir(&root)
                .args([
                    "build",
                    "-q",
                    "--bin",
                    "dashlight",
                    "--bin",
                    "dashlight-worker",
                    "--bin",
                    "dashlight-scheduler",
                    "--bin",
                    "dashlight-admin-api",
                ])
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err("cargo build of the binaries failed".into());
            }
            // This test executable lives in <target>/debug/deps.
            let exe = std::env::current_exe().map_err(|e| e.to_string())?;
            Ok(exe.parent().and_then(|p| p.parent()).map(PathBuf::from).ok_or("no target dir")?)
        })
        .clone()
        .expect("binaries built")
}

/// A command for one of the programs, with a clean environment of Dashlight variables.
pub fn command(name: &str) -> Command {
    let mut c = Command::new(bin_dir().join(name));
    for (k, _) in std::env::vars() {
        if k.starts_with("DATABASE_")
            || k.starts_with("SMTP_")
            || k.starts_with("SMS_")
            || k.starts_with("VAPID_")
            || k.starts_with("ADMIN_API_")
        {
            c.env_remove(k);
        }
    }
    c
}
