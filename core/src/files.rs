//! Files to delete from disk, crash-safe. A request ([`request_deletion`], a row of
//! `file_deletions`) is written in the transaction that makes a file unneeded, and carried out
//! after the commit by [`delete_requested`], which deletes the row once the file is gone. So a
//! crash between the commit and the deletion loses nothing: the request waits for the next try.
//! Owns `file_deletions`.
//!
//! Today the requests are an erased student's lesson attachments: [`crate::lessons::erase_person`]
//! records them in the erasure's transaction, the admin API carries them out right after the
//! erasure commits, and the worker's retention task on every run (for a request left by a crash,
//! a failed deletion, or an API host without the directory).
//!
//! Paths are relative to `ATTACHMENTS_DIR`; an absolute path counts only if it lies inside it.
//! Nothing outside the directory is deleted: a path with a `..` component, an absolute path
//! elsewhere, or one that leads out of the directory through a symbolic link is refused, and its
//! request dropped and logged with the request's id (never the path, which may name the person).
//! A file already missing counts as deleted. Any other I/O error keeps the request, with its
//! attempts and the OS's message, for the next try.

use std::{
    io,
    path::{Component, Path, PathBuf},
};

use serde::Serialize;
use sqlx::{PgConnection, PgPool};

/// Requests carried out per transaction.
pub const BATCH: i64 = 50;

/// What [`delete_requested`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Deleted {
    /// Files removed.
    pub removed: u64,
    /// Requests whose file was already missing (done too).
    pub already_gone: u64,
    /// Requests dropped because their path leads outside the directory (nothing deleted).
    pub refused: u64,
    /// Requests whose file could not be removed; kept for the next try.
    pub failed: u64,
}

/// Why [`delete_requested`] did not run.
#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    /// The database failed; the requests stay.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The directory cannot be used here (missing, not a directory, not readable); the requests
    /// stay for a process that has it.
    #[error("ATTACHMENTS_DIR {}: {source}", .dir.display())]
    Dir {
        /// The directory as configured.
        dir: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

/// Records that the files at `paths` (relative to `ATTACHMENTS_DIR`) are to be deleted, in the
/// caller's transaction. Empty paths are left out, repeated ones recorded once. Returns how many
/// requests were written.
pub async fn request_deletion(conn: &mut PgConnection, paths: &[String]) -> Result<u64, sqlx::Error> {
    if paths.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query!(
        "INSERT INTO file_deletions (path) SELECT DISTINCT p FROM unnest($1::text[]) AS p WHERE p <> ''",
        paths,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

/// Carries out every request waiting: in transactions of [`BATCH`] requests taken with
/// `FOR UPDATE SKIP LOCKED` (so two processes never work on one request), each file is found
/// inside `dir`, removed, and its request deleted; a refused path's request is dropped, a failed
/// one kept with `attempts + 1` and `last_error`. Each request is tried at most once per call.
/// With no request waiting, `dir` is not looked at; with requests and no usable `dir`, nothing
/// is done ([`DeleteError::Dir`]).
pub async fn delete_requested(pool: &PgPool, dir: &Path) -> Result<Deleted, DeleteError> {
    let mut out = Deleted::default();
    let mut found: Option<Roots> = None;
    let mut after = 0_i64;
    loop {
        let mut tx = pool.begin().await?;
        let batch = sqlx::query!(
            "SELECT id, path FROM file_deletions WHERE id > $1 ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
            after,
            BATCH,
        )
        .fetch_all(&mut *tx)
        .await?;
        let Some(last) = batch.last() else {
            break;
        };
        after = last.id;
        // The directory is looked at once, and only when there is something to delete.
        if found.is_none() {
            found = Some(Roots::of(dir).await?);
        }
        let roots = found.as_ref().expect("set above");
        let mut done = Vec::new();
        let (mut failed, mut errors) = (Vec::new(), Vec::new());
        for r in &batch {
            match carry_out(roots, &r.path).await {
                Ok(Target::Removed) => {
                    out.removed += 1;
                    done.push(r.id);
                }
                Ok(Target::Gone) => {
                    out.already_gone += 1;
                    done.push(r.id);
                }
                Ok(Target::Outside) => {
                    tracing::warn!(
                        request_id = r.id,
                        "file deletion refused: its path leads outside ATTACHMENTS_DIR; the request is dropped, nothing deleted"
                    );
                    out.refused += 1;
                    done.push(r.id);
                }
                Err(e) => {
                    tracing::warn!(request_id = r.id, error = %e, "a requested file could not be deleted; it is tried again on the next run");
                    out.failed += 1;
                    failed.push(r.id);
                    errors.push(e.to_string());
                }
            }
        }
        sqlx::query!("DELETE FROM file_deletions WHERE id = ANY($1)", &done)
            .execute(&mut *tx)
            .await?;
        sqlx::query!(
            "UPDATE file_deletions f SET attempts = f.attempts + 1, last_error = left(e.error, 2000)
             FROM unnest($1::bigint[], $2::text[]) AS e(id, error) WHERE f.id = e.id",
            &failed,
            &errors,
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if (batch.len() as i64) < BATCH {
            break;
        }
    }
    Ok(out)
}

/// The directory, absolute: with its symbolic links resolved (what every file must lie in), and
/// as configured (an absolute stored path may be spelt either way).
struct Roots {
    resolved: PathBuf,
    configured: PathBuf,
}

impl Roots {
    async fn of(dir: &Path) -> Result<Roots, DeleteError> {
        let err = |source| DeleteError::Dir {
            dir: dir.to_owned(),
            source,
        };
        let resolved = tokio::fs::canonicalize(dir).await.map_err(err)?;
        if !tokio::fs::metadata(&resolved).await.map_err(err)?.is_dir() {
            return Err(err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory")));
        }
        let configured = std::path::absolute(dir).map_err(err)?;
        Ok(Roots { resolved, configured })
    }
}

/// Where a request led.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    /// The file was removed.
    Removed,
    /// There was no file.
    Gone,
    /// The path leads outside the directory: refused, nothing removed.
    Outside,
}

/// Removes the file `stored` names, if it lies inside the directory.
async fn carry_out(roots: &Roots, stored: &str) -> io::Result<Target> {
    let Some(relative) = relative_inside(stored, &[&roots.resolved, &roots.configured]) else {
        return Ok(Target::Outside);
    };
    let Some(file) = locate(&roots.resolved, &relative).await? else {
        return Ok(Target::Outside);
    };
    match tokio::fs::remove_file(&file).await {
        Ok(()) => Ok(Target::Removed),
        Err(e) if missing(&e) => Ok(Target::Gone),
        Err(e) => Err(e),
    }
}

/// The path a stored path names, relative to the directory, read from its text alone; `None`
/// (refused) when it is empty, has a `..` component, is absolute but not under one of `roots`
/// (the directory's absolute spellings), or names the directory itself.
fn relative_inside(stored: &str, roots: &[&Path]) -> Option<PathBuf> {
    let path = Path::new(stored);
    let relative = if path.is_absolute() {
        roots.iter().find_map(|r| path.strip_prefix(r).ok())?
    } else {
        path
    };
    let mut out = PathBuf::new();
    for c in relative.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (!out.as_os_str().is_empty()).then_some(out)
}

/// The file `relative` names under `root` (resolved), with the symbolic links of its folders
/// resolved: `Some(path)` to remove, `Some` of a missing path when its folder is missing (nothing
/// to remove), `None` when a link leads outside `root`. A file that is itself a link is removed
/// (the link only) when it points inside `root`, and refused when it points outside or nowhere.
async fn locate(root: &Path, relative: &Path) -> io::Result<Option<PathBuf>> {
    let joined = root.join(relative);
    let (Some(folder), Some(name)) = (joined.parent(), joined.file_name()) else {
        return Ok(None);
    };
    let folder = match tokio::fs::canonicalize(folder).await {
        Ok(f) => f,
        // No folder, no file: removing the joined path finds nothing.
        Err(e) if missing(&e) => return Ok(Some(joined)),
        Err(e) => return Err(e),
    };
    if !folder.starts_with(root) {
        return Ok(None);
    }
    let file = folder.join(name);
    match tokio::fs::symlink_metadata(&file).await {
        Ok(m) if m.file_type().is_symlink() => match tokio::fs::canonicalize(&file).await {
            Ok(target) if target.starts_with(root) => Ok(Some(file)),
            Ok(_) => Ok(None),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(e),
        },
        Ok(_) => Ok(Some(file)),
        Err(e) if missing(&e) => Ok(Some(file)),
        Err(e) => Err(e),
    }
}

/// The file is not there (or a folder on its way is a file).
fn missing(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(stored: &str) -> Option<String> {
        relative_inside(stored, &[Path::new("/srv/school/attachments"), Path::new("/data/attachments")])
            .map(|p| p.to_string_lossy().into_owned())
    }

    #[test]
    fn a_plain_relative_path_is_taken_as_it_is() {
        assert_eq!(rel("lessons/42/route.jpg").as_deref(), Some("lessons/42/route.jpg"));
        assert_eq!(rel("route.jpg").as_deref(), Some("route.jpg"));
        assert_eq!(rel("./lessons//42/./route.jpg").as_deref(), Some("lessons/42/route.jpg"));
    }

    #[test]
    fn a_parent_component_is_refused_wherever_it_is() {
        assert_eq!(rel("../outside.txt"), None);
        assert_eq!(rel("lessons/../../outside.txt"), None);
        assert_eq!(rel("lessons/../route.jpg"), None, "even when it would come back inside");
        assert_eq!(rel("/srv/school/attachments/../secrets.txt"), None);
    }

    #[test]
    fn an_absolute_path_counts_only_inside_the_directory() {
        assert_eq!(rel("/srv/school/attachments/a/b.pdf").as_deref(), Some("a/b.pdf"));
        assert_eq!(rel("/data/attachments/b.pdf").as_deref(), Some("b.pdf"), "either spelling");
        assert_eq!(rel("/etc/passwd"), None);
        assert_eq!(rel("/srv/school/attachments-old/b.pdf"), None, "a sibling with a longer name");
        assert_eq!(rel("/srv/school/attachments"), None, "the directory itself");
    }

    #[test]
    fn nothing_names_nothing() {
        assert_eq!(rel(""), None);
        assert_eq!(rel("."), None);
        assert_eq!(rel("./"), None);
    }

    /// A fresh folder under the system's temporary directory, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let dir = std::env::temp_dir().join(format!("dashlight-files-{tag}-{}-{nanos}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(std::fs::canonicalize(dir).unwrap())
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn links_never_lead_a_deletion_outside_the_directory() {
        let s = Scratch::new("links");
        let root = s.0.join("attachments");
        let outside = s.0.join("outside");
        std::fs::create_dir_all(root.join("sub")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("sub/a.txt"), "a").unwrap();
        std::fs::write(outside.join("secret.txt"), "s").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("away")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret.txt"), root.join("secret-link")).unwrap();
        std::os::unix::fs::symlink(root.join("sub"), root.join("near")).unwrap();
        let roots = Roots::of(&root).await.unwrap();

        // A folder that is a link to outside, a file that is a link to outside: refused.
        assert_eq!(carry_out(&roots, "away/secret.txt").await.unwrap(), Target::Outside);
        assert_eq!(carry_out(&roots, "secret-link").await.unwrap(), Target::Outside);
        assert!(outside.join("secret.txt").exists());
        assert!(root.join("secret-link").exists(), "the link itself stays too");
        // A link that stays inside is followed.
        assert_eq!(carry_out(&roots, "near/a.txt").await.unwrap(), Target::Removed);
        assert!(!root.join("sub/a.txt").exists());
        // Missing: a missing file, a missing folder, a "folder" that is a file.
        assert_eq!(carry_out(&roots, "sub/a.txt").await.unwrap(), Target::Gone);
        assert_eq!(carry_out(&roots, "nowhere/a.txt").await.unwrap(), Target::Gone);
        std::fs::write(root.join("plain"), "p").unwrap();
        assert_eq!(carry_out(&roots, "plain/a.txt").await.unwrap(), Target::Gone);
        // An absolute path inside is removed; a folder is an error (kept for another try).
        let inside = root.join("plain");
        assert_eq!(carry_out(&roots, inside.to_str().unwrap()).await.unwrap(), Target::Removed);
        assert!(carry_out(&roots, "sub").await.is_err());
        assert!(root.join("sub").is_dir());
    }
}
