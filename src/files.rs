//! The one place magsd reads a user's file and writes an output file a command names.
//!
//! Reading: only regular files (a symbolic link to one is fine); a device, FIFO, socket or
//! folder is refused before it is opened (opening a FIFO would block, and `/dev/zero` never
//! ends), and every read is capped by a stated size ([`MAX_IMAGE_BYTES`], [`MAX_TEXT_BYTES`],
//! [`MAX_MODEL_BYTES`]), checked against the file's size first and enforced while reading, so
//! a file that grows meanwhile cannot exhaust memory either.
//!
//! Writing ([`write_new`]): never through a symbolic link, never over an existing file unless
//! the user said `--force`, and then by renaming a complete new file over it, so a reader never
//! sees half a file. Without `--force` the file is created with `O_CREAT | O_EXCL`
//! (`create_new`), which also refuses a link that appeared after the check.
//!
//! CSV cells ([`csv_cell`]) that a spreadsheet would run as a formula are prefixed with `'`.
use std::io::{Read, Write};
use std::path::Path;

use crate::error::{Error, IoContext, Result};

/// Largest image file read (PNG, JPEG, DICOM): 1 GiB.
pub const MAX_IMAGE_BYTES: u64 = 1 << 30;
/// Largest text file read (manifest CSV, config TOML, split or run JSON, masks' CSV): 256 MiB.
pub const MAX_TEXT_BYTES: u64 = 256 << 20;
/// Largest model or checkpoint file read: 8 GiB (twice the 1-billion-parameter bound of
/// [`crate::model::config::MAX_PARAMETERS`] in float32).
pub const MAX_MODEL_BYTES: u64 = 8 << 30;

/// Checks that `path` is a regular file (following symbolic links) of at most `max` bytes;
/// returns its size. `what` names the kind of file in the message ("image", "manifest", ...).
pub fn check_regular(path: &Path, max: u64, what: &str) -> Result<u64> {
    let meta = std::fs::metadata(path).at(path)?;
    if !meta.is_file() {
        let kind = if meta.is_dir() { "a folder" } else { "a device, FIFO or socket" };
        return Err(Error::bad_file(path, format!("is {kind}, not a regular file; magsd reads the {what} only from regular files")));
    }
    if meta.len() > max {
        return Err(Error::bad_file(
            path,
            format!("is {} bytes, above the limit of {} bytes ({}) for a {what}", meta.len(), max, human(max)),
        ));
    }
    Ok(meta.len())
}

/// Opens a regular file of at most `max` bytes for reading, capped at `max` bytes.
pub fn open(path: &Path, max: u64, what: &str) -> Result<std::io::Take<std::fs::File>> {
    check_regular(path, max, what)?;
    Ok(std::fs::File::open(path).at(path)?.take(max))
}

/// Reads a whole regular file of at most `max` bytes.
pub fn read(path: &Path, max: u64, what: &str) -> Result<Vec<u8>> {
    let len = check_regular(path, max, what)?;
    let mut buf = Vec::with_capacity(len as usize);
    std::fs::File::open(path).at(path)?.take(max + 1).read_to_end(&mut buf).at(path)?;
    if buf.len() as u64 > max {
        return Err(Error::bad_file(path, format!("grew above the limit of {} bytes ({}) for a {what} while being read", max, human(max))));
    }
    Ok(buf)
}

/// Reads a whole regular text file of at most `max` bytes as UTF-8.
pub fn read_to_string(path: &Path, max: u64, what: &str) -> Result<String> {
    String::from_utf8(read(path, max, what)?).map_err(|e| Error::bad_file(path, format!("not UTF-8 text: {e}")))
}

/// Reads an image file (at most [`MAX_IMAGE_BYTES`]).
pub fn read_image(path: &Path) -> Result<Vec<u8>> {
    read(path, MAX_IMAGE_BYTES, "image")
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 && b % (1 << 30) == 0 => format!("{} GiB", b >> 30),
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b => format!("{b} bytes"),
    }
}

/// Refuses to write at `path` when it is a symbolic link (always) or an existing file (unless
/// `force`): the check every output file goes through before work starts.
pub fn check_writable(path: &Path, force: bool) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(Error::bad_file(
            path,
            "is a symbolic link; magsd does not write through links (remove it or choose another path)",
        )),
        Ok(m) if !m.is_file() => Err(Error::bad_file(path, "exists and is not a regular file")),
        Ok(_) if !force => Err(Error::Config(format!(
            "{} already exists; choose another path or add --force to overwrite it",
            path.display()
        ))),
        _ => Ok(()),
    }
}

/// Writes an output file: refused through a symbolic link, and over an existing file unless
/// `force` (see the module docs). The folder must exist.
pub fn write_new(path: &Path, bytes: &[u8], force: bool) -> Result<()> {
    check_writable(path, force)?;
    if path.exists() {
        // `force` and a regular file: a complete new file renamed over it (rename replaces the
        // name, never writes into what it pointed to).
        return crate::error::write_atomic(path, bytes);
    }
    let io = |e: std::io::Error| Error::bad_file(path, format!("cannot write: {e}"));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// A text cell as written into a CSV file: one that starts with `=`, `+`, `-`, `@`, a tab or
/// a carriage return (which a spreadsheet runs as a formula; OWASP "CSV injection") gets a `'`
/// in front, and so does one that starts with `'`, so that [`csv_uncell`] gives back the text
/// exactly. Numbers (`-0.5`, `+1e3`) stay as they are.
pub fn csv_cell(s: &str) -> std::borrow::Cow<'_, str> {
    let risky = s.starts_with(['=', '+', '-', '@', '\t', '\r', '\'']);
    if risky && s.parse::<f64>().is_err() { format!("'{s}").into() } else { s.into() }
}

/// The text of a cell written by [`csv_cell`].
pub fn csv_uncell(s: &str) -> &str {
    match s.strip_prefix('\'') {
        Some(rest) if rest.starts_with(['=', '+', '-', '@', '\t', '\r', '\'']) => rest,
        _ => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formula_cells_are_quoted_numbers_are_not_and_everything_reads_back() {
        for (text, written) in [
            ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
            ("+cmd", "'+cmd"),
            ("-x", "'-x"),
            ("@SUM(A1)", "'@SUM(A1)"),
            ("\tx", "'\tx"),
            ("\rx", "'\rx"),
            ("'quoted", "''quoted"),
            ("-0.5", "-0.5"),
            ("+1e3", "+1e3"),
            ("a=b", "a=b"),
            ("scan.png", "scan.png"),
            ("", ""),
        ] {
            assert_eq!(csv_cell(text), written, "{text:?}");
            assert_eq!(csv_uncell(&csv_cell(text)), text, "{text:?}");
        }
    }

    #[test]
    fn only_regular_files_are_read_and_within_their_cap() {
        let d = tempfile::tempdir().unwrap();
        let e = read(Path::new("/dev/zero"), MAX_IMAGE_BYTES, "image").unwrap_err().to_string();
        assert!(e.contains("/dev/zero") && e.contains("not a regular file"), "{e}");
        let e = read(d.path(), MAX_TEXT_BYTES, "manifest").unwrap_err().to_string();
        assert!(e.contains("a folder"), "{e}");
        let f = d.path().join("big.txt");
        std::fs::write(&f, vec![b'x'; 100]).unwrap();
        let e = read(&f, 99, "config").unwrap_err().to_string();
        assert!(e.contains("100 bytes") && e.contains("limit of 99"), "{e}");
        assert_eq!(read(&f, 100, "config").unwrap().len(), 100);
        let link = d.path().join("link.txt");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        assert_eq!(read(&link, 100, "config").unwrap().len(), 100, "a link to a regular file is read");
    }

    #[test]
    fn writes_never_follow_links_and_replace_only_with_force() {
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("target.txt");
        std::fs::write(&target, "keep").unwrap();
        let link = d.path().join("out.png");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for force in [false, true] {
            let e = write_new(&link, b"new", force).unwrap_err().to_string();
            assert!(e.contains("symbolic link"), "{e}");
        }
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep");
        let e = write_new(&target, b"new", false).unwrap_err().to_string();
        assert!(e.contains("--force"), "{e}");
        write_new(&target, b"new", true).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        let fresh = d.path().join("fresh.txt");
        write_new(&fresh, b"x", false).unwrap();
        assert_eq!(std::fs::read(&fresh).unwrap(), b"x");
    }
}
