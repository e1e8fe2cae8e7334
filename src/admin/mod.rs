//! Commands an operator runs beside the server (`syncserver <command>`), beyond `serve`.

pub mod check_config;
