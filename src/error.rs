//! The one error type of the library: every failure names what it concerns (a file, a tensor,
//! a setting) and why, so the CLI can print it as is.
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// An input file (image, manifest, checkpoint, ...) is unusable; `reason` says why.
    #[error("{path}: {reason}")]
    BadFile { path: PathBuf, reason: String },
    /// Inconsistent or invalid user data (dataset, split, labels).
    #[error("{0}")]
    Data(String),
    /// Invalid configuration or command-line value.
    #[error("invalid setting: {0}")]
    Config(String),
    /// A model, checkpoint or weight file does not fit the requested architecture.
    #[error("{0}")]
    Model(String),
    /// An error reported by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The user asked to stop (Ctrl-C); state was saved where that was possible.
    #[error("interrupted")]
    Interrupted,
    /// Training cannot go on (a non-finite loss or weight); the files on disk hold the last
    /// good state.
    #[error("{0}")]
    Training(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }

    pub fn bad_file(path: impl AsRef<Path>, reason: impl Into<String>) -> Self {
        Error::BadFile { path: path.as_ref().to_path_buf(), reason: reason.into() }
    }
}

/// Attaches a path to `std::io` results.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

/// Writes a file atomically: the bytes go to a temporary file in the same folder, which is
/// flushed to disk and then renamed over `path`, so a crash never leaves a half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).at(dir)?;
    // A new file of a fresh name (created exclusively, so never through a planted link), with
    // the permissions `File::create` gives (0o666 less the umask), not tempfile's 0o600.
    let mut tmp = tempfile::Builder::new()
        .prefix(".magsd-")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
        .tempfile_in(dir)
        .at(dir)?;
    tmp.write_all(bytes).at(tmp.path())?;
    tmp.as_file().sync_all().at(tmp.path())?;
    tmp.persist(path).map_err(|e| e.error).at(path)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_a_file_with_the_permissions_file_create_gives() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let plain = d.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let out = d.path().join("out.json");
        std::fs::write(&out, b"old").unwrap();
        write_atomic(&out, b"new").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"new");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&out), mode(&plain));
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 2, "no temporary file left");
    }
}
