//! App deployments: an operator's git repository, built and run somewhere on the LAN.
//!
//! The app manifest (`kraken.toml` at the repository's root, see [`manifest`]) and the
//! worker's side of a deployment ([`app`]: clone, build, run, health, logs). Placing and
//! moving deployments is the orchestrator's.

pub mod app;
pub mod manifest;
pub mod proxy;
