//! syncserver: a Firefox Sync 1.5 storage server. See ARCHITECTURE.md for the map.

pub mod admin;
pub mod auth;
pub mod db;
pub mod error;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod secret;
pub mod server;
pub mod settings;
pub mod tokenserver;
pub mod web;
