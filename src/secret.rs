//! Settings values that must never reach a log or a debug print: secrets, and database URLs
//! (whose passwords are shown masked). Both read as `&str` where they are used.

use std::fmt;
use std::ops::Deref;

use serde::Deserialize;

/// A secret setting: `Debug` prints `[redacted]` (or `""` when unset).
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

/// A database URL: `Debug` and `redacted()` mask its password.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct DbUrl(String);

impl Deref for Secret {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl Deref for DbUrl {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<T: Into<String>> From<T> for Secret {
    fn from(s: T) -> Self {
        Secret(s.into())
    }
}

impl<T: Into<String>> From<T> for DbUrl {
    fn from(s: T) -> Self {
        DbUrl(s.into())
    }
}

impl PartialEq<&str> for Secret {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("[redacted]")
        }
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_url(&self.0))
    }
}

impl DbUrl {
    /// The URL with its password masked, for messages.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

/// `scheme://user:password@host/...` with the password masked; other URLs unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:****{}", &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_a_secret_or_password() {
        assert_eq!(format!("{:?}", Secret::from("hunter2")), "[redacted]");
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
        let url = DbUrl::from("mysql://sync:p@ss:w0rd@db.example:3306/sync");
        assert_eq!(
            format!("{url:?}"),
            "\"mysql://sync:****@db.example:3306/sync\""
        );
        assert_eq!(
            redact_url("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
        assert_eq!(redact_url("sqlite:data/a@b.db"), "sqlite:data/a@b.db");
        assert_eq!(&*url, "mysql://sync:p@ss:w0rd@db.example:3306/sync");
    }
}
