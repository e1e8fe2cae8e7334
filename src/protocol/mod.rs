//! The Sync 1.5 rules as pure functions: no I/O, no HTTP types, no SQL. Everything here is
//! unit-tested in place.

pub mod batch_id;
pub mod bso;
pub mod headers;
pub mod limits;
pub mod post;
pub mod preconditions;
pub mod query;
pub mod timestamp;
pub mod validate;

pub use bso::{Bso, BsoUpdate, StoredBso};
pub use limits::Limits;
pub use preconditions::Precondition;
pub use query::{BatchRequest, BsoQuery, Offset, Sort};
pub use timestamp::SyncTimestamp;
