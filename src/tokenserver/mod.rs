//! The tokenserver's rules (SPEC 3), as pure functions: header parsing, claim validation
//! against the user record, the user-record update, node choice, metrics hashes and the error
//! bodies. Not wired to HTTP or a database yet (see the closing note of issue 4).

pub mod claims;
pub mod error;
pub mod hashes;
pub mod keyid;
pub mod nodes;
pub mod oauth;

pub use error::TokenserverError;
