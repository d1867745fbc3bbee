//! Writing the metrics for node_exporter's textfile collector.
//!
//! The collector reads every `*.prom` file in its directory at each scrape, with no locking:
//! a file rewritten in place can be read half-written, which it reports as a parse error and
//! drops all of the file's metrics. So the file is written under another name in the same
//! directory (a rename is atomic only within one file system), flushed to disk, and renamed
//! over the target: a reader sees the old file or the new one, never a mix.

use std::path::Path;

/// Replaces `path` with `contents` atomically (see the module documentation and
/// [`crate::durable`]). The file is made world-readable (0644): node_exporter runs as its own
/// unprivileged user, and the counters are no secret on the gateway itself. The temporary
/// file's name starts with a dot and ends in `.tmp`: the collector only reads `*.prom`.
pub fn write_atomically(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    crate::durable::write_atomically(path, contents, 0o644)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    #[test]
    fn is_world_readable_and_leaves_nothing_else() {
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
}
