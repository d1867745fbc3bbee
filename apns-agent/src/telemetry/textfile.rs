//! Writing the metrics for node_exporter's textfile collector.
//!
//! The collector reads every `*.prom` file in its directory at each scrape, with no locking:
//! a file rewritten in place can be read half-written, which it reports as a parse error and
//! drops all of the file's metrics. So the file is written under another name in the same
//! directory (a rename is atomic only within one file system), flushed to disk, and renamed
//! over the target: a reader sees the old file or the new one, never a mix.

use std::{
    fs::{File, Permissions},
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::Path,
};

use anyhow::Context as _;

/// Replaces `path` with `contents` atomically (see the module documentation). The file is
/// made world-readable (0644): node_exporter runs as its own unprivileged user, and the
/// counters are no secret on the gateway itself.
pub fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{} does not name a file", path.display()))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    // A leading dot and a `.tmp` suffix: the collector only reads `*.prom`, so it never
    // picks up the temporary file. tempfile removes it again if anything below fails.
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(file_name);
    prefix.push(".");
    let mut temp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file next to {}", path.display()))?;
    let temp_path = temp.path().to_owned();
    let writing = || {
        format!(
            "writing {} (through {})",
            path.display(),
            temp_path.display()
        )
    };
    temp.as_file()
        .set_permissions(Permissions::from_mode(0o644))
        .with_context(writing)?;
    temp.write_all(contents).with_context(writing)?;
    // Data on disk before the rename, or a crash could leave an empty file under the name.
    temp.as_file().sync_all().with_context(writing)?;
    temp.persist(path)
        .map_err(|err| err.error)
        .with_context(|| format!("renaming the new {} into place", path.display()))?;
    // The rename itself is durable once the directory is synced.
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .with_context(|| {
            format!(
                "syncing directory {} after writing {}",
                dir.display(),
                path.display()
            )
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_file_and_leaves_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apns.prom");
        write_atomically(&path, b"a 1\n").unwrap();
        write_atomically(&path, b"a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a 2\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["apns.prom"]);
    }

    #[test]
    fn errors_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/apns.prom");
        let err = format!("{:#}", write_atomically(&path, b"").unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");
        // A directory in the way of the rename.
        let path = dir.path().join("taken.prom");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), "").unwrap();
        let err = format!("{:#}", write_atomically(&path, b"").unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
