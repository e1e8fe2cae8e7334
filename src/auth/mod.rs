//! Tokens and Hawk: shared by the storage API (verification) and the `token` subcommand.

pub mod hawk;
pub mod hawk_header;
pub mod nonces;
pub mod tokenlib;

pub use tokenlib::{Secrets, TokenPayload, new_salt};
