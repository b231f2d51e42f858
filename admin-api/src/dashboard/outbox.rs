//! The Outbox page: the latest files a channel without a provider wrote to `OUTBOX_DIR`
//! (`<UTC time>-<channel>-<delivery>.eml|txt`, see the worker's outbox). An email is parsed and
//! shown as it would look: subject, sender and recipients, and its HTML part in a sandboxed
//! `<iframe srcdoc>` (escaped into the attribute; no scripts, no same-origin access, and the
//! page's Content-Security-Policy blocks remote images). Other messages are shown as text.
//!
//! Only names the directory listing returned are ever opened, so `?file=` cannot reach
//! outside the folder. The page exists only when some channel writes to the outbox.

use std::path::Path;

use axum::{
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use dashlight_core::Config;
use mail_parser::{Address, MessageParser, MimeHeaders};
use serde::{Deserialize, Serialize};

use super::{
    Layout, Operator, render,
    view::{self, Time},
};
use crate::{AppState, error::ApiError};

/// Files listed.
pub const LATEST: usize = 50;
/// Largest file previewed.
pub const MAX_PREVIEW_BYTES: u64 = 2 * 1024 * 1024;

/// The channels that write to the outbox under `config` (no provider configured).
pub fn channels(config: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if config.smtp.is_none() {
        out.push("email");
    }
    if config.sms.is_none() {
        out.push("sms");
    }
    if config.push.is_none() {
        out.push("push");
    }
    out
}

/// True when some channel writes to the outbox, so the page is worth showing.
pub fn enabled(config: &Config) -> bool {
    !channels(config).is_empty()
}

/// `?file=` of the page.
#[derive(Debug, Default, Deserialize)]
pub struct OutboxQuery {
    /// The file to show (a name from the list); the newest when left out.
    pub file: Option<String>,
}

#[derive(Debug, Serialize)]
struct Entry {
    name: String,
    href: String,
    channel: String,
    delivery_id: Option<i64>,
    written: Option<Time>,
    size: String,
    selected: bool,
}

#[derive(Debug, Default, Serialize, PartialEq)]
struct Email {
    subject: String,
    from: String,
    to: String,
    date: Option<String>,
    html: Option<String>,
    text: Option<String>,
    attachments: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Preview {
    name: String,
    email: Option<Email>,
    text: Option<String>,
}

#[derive(Debug, Serialize)]
struct OutboxPage {
    enabled: bool,
    dir: String,
    channels: String,
    entries: Vec<Entry>,
    preview: Option<Preview>,
    error: Option<String>,
}

/// Reads `<time>-<channel>-<delivery>.<ext>`.
fn parse_name(name: &str) -> (Option<chrono::DateTime<chrono::Utc>>, String, Option<i64>) {
    let stem = name.rsplit_once('.').map_or(name, |(s, _)| s);
    let mut parts = stem.splitn(3, '-');
    let time = parts
        .next()
        .and_then(|t| chrono::NaiveDateTime::parse_from_str(t, "%Y%m%dT%H%M%S%.fZ").ok())
        .map(|t| t.and_utc());
    let channel = parts.next().unwrap_or("").to_owned();
    let delivery = parts.next().and_then(|d| d.parse().ok());
    (time, channel, delivery)
}

fn human_size(n: u64) -> String {
    if n < 1024 {
        format!("{n} B")
    } else if n < 1024 * 1024 {
        format!("{:.1} KB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MB", n as f64 / (1024.0 * 1024.0))
    }
}

/// The newest message files of `dir` (names sort by time), with their sizes.
async fn latest(dir: &Path) -> std::io::Result<Vec<(String, u64)>> {
    let mut files = Vec::new();
    let mut rd = match tokio::fs::read_dir(dir).await {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(files),
        Err(e) => return Err(e),
    };
    while let Some(entry) = rd.next_entry().await? {
        let Ok(name) = entry.file_name().into_string() else { continue };
        if name.starts_with('.') {
            continue; // a message being written
        }
        let meta = entry.metadata().await?;
        if meta.is_file() {
            files.push((name, meta.len()));
        }
    }
    files.sort_by(|a, b| b.0.cmp(&a.0));
    files.truncate(LATEST);
    Ok(files)
}

/// A message file older than the listed ones: a plain file name (no path, not hidden) of a
/// regular file directly in `dir`, with its size.
async fn older_file(dir: &Path, name: &str) -> Option<(String, u64)> {
    let plain = !name.starts_with('.') && !name.contains(['/', '\\', '\0']) && Path::new(name).file_name() == Some(name.as_ref());
    if !plain {
        return None;
    }
    let meta = tokio::fs::symlink_metadata(dir.join(name)).await.ok()?;
    meta.is_file().then(|| (name.to_owned(), meta.len()))
}

fn addresses(a: Option<&Address<'_>>) -> String {
    a.map(|a| {
        a.iter()
            .map(|m| match (m.name(), m.address()) {
                (Some(n), Some(addr)) => format!("{n} <{addr}>"),
                (None, Some(addr)) => addr.to_owned(),
                (Some(n), None) => n.to_owned(),
                (None, None) => String::new(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    })
    .unwrap_or_default()
}

/// Parses an RFC 5322 message for the preview.
fn parse_email(raw: &[u8], tz: chrono_tz::Tz) -> Option<Email> {
    let msg = MessageParser::default().parse(raw)?;
    let date = msg
        .date()
        .and_then(|d| chrono::DateTime::parse_from_rfc3339(&d.to_rfc3339()).ok())
        .map(|d| view::time(d.to_utc(), tz).full);
    Some(Email {
        subject: msg.subject().unwrap_or("(no subject)").to_owned(),
        from: addresses(msg.from()),
        to: addresses(msg.to()),
        date,
        html: msg.body_html(0).map(|h| h.into_owned()),
        text: msg.body_text(0).map(|t| t.into_owned()),
        attachments: msg
            .attachments()
            .map(|a| match (a.attachment_name(), a.content_type()) {
                (Some(name), _) => name.to_owned(),
                (None, Some(ct)) => format!("{}/{} part", ct.ctype(), ct.subtype().unwrap_or("*")),
                (None, None) => "an unnamed part".to_owned(),
            })
            .collect(),
    })
}

async fn preview(dir: &Path, name: &str, size: u64, tz: chrono_tz::Tz) -> Result<Preview, String> {
    if size > MAX_PREVIEW_BYTES {
        return Err(format!("{name} is {} — too large to preview here.", human_size(size)));
    }
    let raw = tokio::fs::read(dir.join(name))
        .await
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    if name.ends_with(".eml") {
        match parse_email(&raw, tz) {
            Some(email) => Ok(Preview {
                name: name.to_owned(),
                email: Some(email),
                text: None,
            }),
            None => Err(format!("{name} is not an email this page can read.")),
        }
    } else {
        Ok(Preview {
            name: name.to_owned(),
            email: None,
            text: Some(String::from_utf8_lossy(&raw).into_owned()),
        })
    }
}

/// `GET /outbox`: the latest files and one of them shown.
pub async fn page(State(state): State<AppState>, _: Operator, Query(q): Query<OutboxQuery>) -> Response {
    let layout = Layout::new(&state, "Outbox", "outbox");
    let config = &state.config;
    let tz = config.school_timezone;
    let dir = config.outbox_dir.clone();
    let mut page = OutboxPage {
        enabled: enabled(config),
        dir: dir.display().to_string(),
        channels: channels(config).join(", "),
        entries: Vec::new(),
        preview: None,
        error: None,
    };
    if !page.enabled {
        return render(StatusCode::OK, "outbox", &layout, &page);
    }
    let files = match latest(&dir).await {
        Ok(f) => f,
        Err(e) => {
            return super::error_page(
                layout,
                ApiError::Internal(anyhow::Error::new(e).context(format!("listing the outbox {}", dir.display()))),
            );
        }
    };
    let wanted = q.file.as_deref().filter(|f| !f.is_empty());
    let older;
    let selected = match wanted {
        Some(w) => match files.iter().find(|(n, _)| n == w) {
            Some(f) => Some(f),
            None => {
                older = older_file(&dir, w).await;
                older.as_ref()
            }
        },
        None => files.first(),
    };
    let mut status = StatusCode::OK;
    match (selected, wanted) {
        (Some((name, size)), _) => match preview(&dir, name, *size, tz).await {
            Ok(p) => page.preview = Some(p),
            Err(e) => page.error = Some(e),
        },
        (None, Some(w)) => {
            page.error = Some(format!("There is no message {w} in the outbox."));
            status = StatusCode::NOT_FOUND;
        }
        (None, None) => {}
    }
    let selected_name = selected.map(|(n, _)| n.as_str());
    page.entries = files
        .iter()
        .map(|(name, size)| {
            let (time, channel, delivery_id) = parse_name(name);
            Entry {
                selected: Some(name.as_str()) == selected_name,
                href: format!(
                    "/outbox?file={}",
                    form_urlencoded::byte_serialize(name.as_bytes()).collect::<String>()
                ),
                name: name.clone(),
                channel,
                delivery_id,
                written: view::time_opt(time, tz),
                size: human_size(*size),
            }
        })
        .collect();
    render(status, "outbox", &layout, &page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_and_sizes_are_read_for_people() {
        let (t, ch, id) = parse_name("20261125T031500.123456Z-email-42.eml");
        assert_eq!(t.unwrap().to_rfc3339(), "2026-11-25T03:15:00.123456+00:00");
        assert_eq!((ch.as_str(), id), ("email", Some(42)));
        assert_eq!(parse_name("notes.txt").1, "");
        assert_eq!(human_size(10), "10 B");
        assert_eq!(human_size(2048), "2.0 KB");
    }

    #[tokio::test]
    async fn only_plain_files_of_the_folder_are_opened() {
        let dir = std::env::temp_dir().join(format!("dashlight-outbox-test-{}", std::process::id()));
        tokio::fs::create_dir_all(dir.join("sub")).await.unwrap();
        tokio::fs::write(dir.join("a-email-1.eml"), b"x").await.unwrap();
        tokio::fs::write(dir.join(".hidden"), b"x").await.unwrap();
        assert_eq!(older_file(&dir, "a-email-1.eml").await, Some(("a-email-1.eml".into(), 1)));
        for bad in [
            "../a-email-1.eml",
            "sub",
            ".hidden",
            "/etc/passwd",
            "sub/../a-email-1.eml",
            "..",
            "missing.eml",
        ] {
            assert_eq!(older_file(&dir, bad).await, None, "{bad}");
        }
        tokio::fs::remove_dir_all(&dir).await.unwrap();
    }

    #[test]
    fn emails_are_parsed() {
        let raw =
            b"From: School <no-reply@school.test>\r\nTo: a@b.test\r\nSubject: Your lesson\r\nDate: Tue, 3 Mar 2026 09:00:00 +0000\r\n\
MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nHello\r\n\
--b\r\nContent-Type: text/html\r\n\r\n<p>Hello <script>x</script></p>\r\n--b--\r\n";
        let e = parse_email(raw, chrono_tz::UTC).unwrap();
        assert_eq!(e.subject, "Your lesson");
        assert_eq!(e.from, "School <no-reply@school.test>");
        assert_eq!(e.to, "a@b.test");
        assert!(e.html.unwrap().contains("<p>Hello"));
        assert_eq!(e.text.as_deref().map(str::trim), Some("Hello"));
        assert_eq!(e.date.as_deref(), Some("Tue 3 Mar 2026 09:00:00 UTC"));
    }
}
