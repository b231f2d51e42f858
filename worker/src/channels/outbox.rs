//! The outbox: where a channel without a provider writes one readable file per message, named
//! so that they sort by time (`20261125T031500.123456Z-email-42.eml`).

use std::path::{Path, PathBuf};

use chrono::Utc;

use super::{SendError, Sent};

/// A folder that collects messages.
#[derive(Debug, Clone)]
pub struct Outbox {
    dir: PathBuf,
}

impl Outbox {
    /// An outbox in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Outbox { dir: dir.into() }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes one message. `ext` is the file extension (`eml`, `txt`).
    pub async fn write(&self, channel: &str, delivery_id: i64, ext: &str, content: &[u8]) -> Result<Sent, SendError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| SendError::transient(format!("cannot create outbox {}: {e}", self.dir.display())))?;
        let name = format!("{}-{channel}-{delivery_id}.{ext}", Utc::now().format("%Y%m%dT%H%M%S%.6fZ"));
        let path = self.dir.join(&name);
        // Write then rename, so a reader never sees half a message.
        let tmp = self.dir.join(format!(".{name}.tmp"));
        tokio::fs::write(&tmp, content)
            .await
            .map_err(|e| SendError::transient(format!("cannot write {}: {e}", tmp.display())))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| SendError::transient(format!("cannot write {}: {e}", path.display())))?;
        Ok(Sent {
            provider_message_id: Some(format!("outbox:{name}")),
        })
    }
}
