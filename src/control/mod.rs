//! The control socket's language: one JSON request line from `peerstash`, then reply lines from
//! the daemon (progress lines, then one final line with an exit code). Shared by both sides.
//! The request line may carry open descriptors (SCM_RIGHTS): the file or folder to back up, the
//! file to restore into, opened by the caller with the caller's own rights.

pub mod client;
pub mod exit;
pub mod health;
mod reply;
mod request;
mod socket;
mod state;
pub mod wire_path;

use std::path::Path;

pub use reply::*;
pub use request::*;
pub use socket::*;
pub use state::*;

/// Descriptors one request may carry; a request with more is refused (and they are closed).
pub const MAX_FDS: usize = 1;

/// A path as the command line shows it: unchanged when it is printable UTF-8; bytes that are not
/// UTF-8 as `\xNN`, control characters (a newline in a name) escaped, and `\` doubled, so the
/// line is unambiguous.
pub fn shown(path: &Path) -> String {
    use std::fmt::Write;
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for chunk in path.as_os_str().as_bytes().utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                c if c.is_control() => out.extend(c.escape_default()),
                c => out.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn paths_are_shown_unambiguously() {
        use std::os::unix::ffi::OsStrExt;
        let p = |b: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(b));
        assert_eq!(shown(&p(b"/a/caf\xc3\xa9")), "/a/café");
        assert_eq!(shown(&p(b"/a/caf\xe9")), "/a/caf\\xe9");
        assert_eq!(shown(&p(b"/a/x\ny")), "/a/x\\ny");
        assert_eq!(shown(&p(b"/a/b\\xe9")), "/a/b\\\\xe9");
    }
}
