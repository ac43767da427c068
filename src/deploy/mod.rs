//! App deployments: an operator's git repository, built and run somewhere on the LAN.
//!
//! So far this holds the app manifest (`kraken.toml` at the repository's root, see
//! [`manifest`]); placement, building, running, redeploying and moving apps are to come.

pub mod manifest;
