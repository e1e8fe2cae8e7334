//! The tokenserver (SPEC 3): FxA OAuth verification (`fxa`, `oauth`), header parsing
//! (`keyid`), claim validation and record update (`claims`), the get-or-create decision
//! (`users`), node choice (`nodes`), metrics hashes (`hashes`), error bodies (`error`), its
//! settings, and the whole token request over the database (`issuer`). HTTP is in web/, SQL in
//! db/tokenserver/.

pub mod claims;
pub mod db;
pub mod error;
pub mod fxa;
pub mod fxa_guard;
pub mod hashes;
pub mod issuer;
pub mod keyid;
pub mod nodes;
pub mod oauth;
pub mod settings;
pub mod users;

pub use error::TokenserverError;
pub use issuer::Tokenserver;

pub type TsResult<T> = Result<T, TokenserverError>;
