//! Replacing a file so that readers and crashes see the old contents or the new, never a mix
//! or an empty file: the state file of live changes (`settings::state`) and the metrics
//! textfile (`telemetry::textfile`) are written this way.

use std::{
    fs::{File, Permissions},
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::Path,
};

use anyhow::Context as _;

/// Replaces `path` with `contents`, with permissions `mode`: written under another name in
/// the same directory (a rename is atomic only within one file system), flushed to disk,
/// renamed over `path`, and the directory flushed so that the rename survives a crash too.
/// The temporary name starts with a dot and ends in `.tmp`, so collectors that read `*.prom`
/// or `*.json` never pick it up; it is removed again if anything fails. Every error names
/// `path`.
pub fn write_atomically(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let file_name = path
        .file_name()
        .with_context(|| format!("{} does not name a file", path.display()))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
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
        .set_permissions(Permissions::from_mode(mode))
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
        let path = dir.path().join("state.json");
        write_atomically(&path, b"1", 0o600).unwrap();
        write_atomically(&path, b"2", 0o640).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "2");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn errors_name_the_path_and_keep_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing/state.json");
        let err = format!("{:#}", write_atomically(&path, b"", 0o600).unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");
        // A directory in the way of the rename.
        let path = dir.path().join("taken.json");
        std::fs::create_dir(&path).unwrap();
        std::fs::write(path.join("x"), "").unwrap();
        let err = format!("{:#}", write_atomically(&path, b"", 0o600).unwrap_err());
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
