//! The bearer token TCP clients of the control API must present: read from a file that only
//! its owner may read, never logged, compared in constant time.

use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use subtle::ConstantTimeEq;

/// Longest token file read.
const MAX_TOKEN_BYTES: u64 = 4096;

/// A secret bearer token. Its `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(Vec<u8>);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Reads the token from `path`: the file must exist, be readable by its owner only
    /// (no group or other permission bits) and hold a non-empty token (surrounding white
    /// space is ignored). The error names the file and what is wrong.
    pub fn from_file(path: &Path) -> Result<Token, String> {
        let shown = path.display();
        let meta = std::fs::metadata(path).map_err(|err| format!("\"{shown}\": {err}"))?;
        if !meta.is_file() {
            return Err(format!("\"{shown}\" is not a file"));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "\"{shown}\" has mode {mode:04o}; a token file must be readable by its owner only (chmod 600 \"{shown}\")"
            ));
        }
        if meta.len() > MAX_TOKEN_BYTES {
            return Err(format!(
                "\"{shown}\" is {} bytes; a token file holds at most {MAX_TOKEN_BYTES}",
                meta.len()
            ));
        }
        let text = std::fs::read(path).map_err(|err| format!("\"{shown}\": {err}"))?;
        Token::new(text.trim_ascii()).ok_or_else(|| format!("\"{shown}\" holds no token"))
    }

    /// A token from its bytes; `None` when empty.
    pub fn new(bytes: &[u8]) -> Option<Token> {
        (!bytes.is_empty()).then(|| Token(bytes.to_vec()))
    }

    /// The token's bytes, to send in an `Authorization` header.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Whether an `Authorization` header value carries this token (`Bearer <token>`), in time
    /// that does not depend on where the two differ.
    pub fn authorizes(&self, header: &[u8]) -> bool {
        let Some(presented) = header
            .strip_prefix(b"Bearer ")
            .or_else(|| header.strip_prefix(b"bearer "))
        else {
            return false;
        };
        bool::from(presented.trim_ascii().ct_eq(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str, mode: u32) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    #[test]
    fn a_private_file_gives_a_token_that_only_matches_itself() {
        let f = file("s3cret\n", 0o600);
        let token = Token::from_file(f.path()).unwrap();
        assert!(token.authorizes(b"Bearer s3cret"));
        assert!(!token.authorizes(b"Bearer s3cre"));
        assert!(!token.authorizes(b"Bearer s3cret2"));
        assert!(!token.authorizes(b"Basic s3cret"));
        assert!(!token.authorizes(b""));
        assert_eq!(format!("{token:?}"), "Token(<redacted>)");
    }

    #[test]
    fn loose_modes_empty_files_and_missing_files_are_refused_by_name() {
        let f = file("s3cret", 0o644);
        let err = Token::from_file(f.path()).unwrap_err();
        assert!(
            err.contains("mode 0644") && err.contains("chmod 600"),
            "{err}"
        );
        let f = file("  \n", 0o600);
        assert!(Token::from_file(f.path())
            .unwrap_err()
            .contains("holds no token"));
        let err = Token::from_file(Path::new("/nonexistent/token")).unwrap_err();
        assert!(err.contains("/nonexistent/token"), "{err}");
    }
}
