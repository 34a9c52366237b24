//! The `mobilenet-serve` binary: parse the command line, set up logging, run the command.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;

use clap::Parser;
use mobilenet_serve::commands::cli::{Cli, Command};
use mobilenet_serve::{commands, telemetry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands whose output is the answer itself log only warnings unless asked.
    let level = match cli.command {
        Command::Classify(_) | Command::Healthcheck(_) | Command::Openapi => "warn",
        _ => "info",
    };
    telemetry::init(cli.global.log_format, level);
    match commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
