//! The binary's subcommands: serve, bench, eval, verify, classify, and their helpers.

pub mod bench;
pub mod chart;
pub mod classify;
pub mod cli;
pub mod client;
pub mod dataset;
pub mod eval;
pub mod npy;
pub mod progress;
pub mod serve;
pub mod verify;
