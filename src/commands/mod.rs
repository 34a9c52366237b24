//! The binary's subcommands: `serve`, `models`, `verify`, `eval`, `bench`, `classify`,
//! `preprocess`, `quantize`, `openapi`, `healthcheck`, `fetch-zoo`, and what they print (tables,
//! charts, `.npy` files, progress bars). The top layer: may use every other.

pub mod bench;
pub mod chart;
pub mod classify;
pub mod cli;
pub mod client;
pub mod dataset;
pub mod eval;
pub mod fetch_zoo;
pub mod manifest_file;
pub mod models;
pub mod npy;
pub mod progress;
pub mod quantize;
pub mod serve;
pub mod verify;

use std::process::ExitCode;
use std::time::Duration;

use self::cli::{Cli, Command, GlobalOptions};
use crate::engine::pool::{LoadOptions, ModelPool};
use crate::engine::{catalog, embedded};
use crate::error::{Error, Result};
use crate::kernels::KernelSet;

/// How `global` says to load `variants` (all when `None`).
fn load_options(global: &GlobalOptions, variants: Option<Vec<String>>) -> Result<LoadOptions> {
    let kernels = KernelSet::select(global.kernels).map_err(Error::Catalog)?;
    tracing::info!(tier = %kernels.tier, int8 = kernels.int8.name, "kernels selected");
    Ok(LoadOptions {
        variants,
        resolution: global.resolution,
        kernels,
    })
}

/// Every variant asked for, or an error.
fn load(global: &GlobalOptions, variants: Option<Vec<String>>) -> Result<ModelPool> {
    pool_of(global, &load_options(global, variants)?, ModelPool::load)
}

/// The pool of the models directory, loaded by `load` (everything, or what loads). Where no
/// directory is named (no `--models`, no `MODELS_DIR`) and the default one holds no model: the
/// default model compiled into the binary, said in the log. A named directory is never
/// replaced: a mistyped path is an error, not a silently different model.
fn pool_of(
    global: &GlobalOptions,
    opts: &LoadOptions,
    load: fn(&std::path::Path, &LoadOptions) -> Result<ModelPool>,
) -> Result<ModelPool> {
    let dir = global.models_dir();
    if global.models_dir.is_some() || catalog::holds_models(dir)? {
        return load(dir, opts);
    }
    let pool = ModelPool::embedded(dir, opts)?;
    tracing::info!(
        variant = %embedded::spec().name,
        file = embedded::FILE,
        sha256 = embedded::SHA256,
        "no models in `{}` and no --models: serving the embedded default model, Google's \
         MobileNet v1 0.25 at 128 px in uint8 (published top-1 39.5%); `fetch-zoo` downloads \
         the whole grid, `--models DIR` serves a directory",
        dir.display()
    );
    Ok(pool)
}

/// What `serve` starts with: in `explicit` model control, the `--load-model` variants (none
/// by default); else `--variants` (all by default), failures listed unless
/// `--require-all-models`.
fn serve_pool(global: &GlobalOptions, args: &cli::ServeArgs) -> Result<ModelPool> {
    let explicit = serve::control_mode(args) == crate::serving::ControlMode::Explicit;
    if !explicit && !args.load_model.is_empty() {
        return Err(Error::Config(
            "--load-model needs --model-control-mode explicit (else every variant loads)".into(),
        ));
    }
    if explicit && args.variants.is_some() {
        return Err(Error::Config(
            "in explicit model control, --load-model names what loads at start, not --variants"
                .into(),
        ));
    }
    let wanted = if explicit {
        Some(args.load_model.clone())
    } else {
        args.variants.clone()
    };
    let opts = load_options(global, wanted)?;
    if explicit && args.load_model.is_empty() {
        return ModelPool::empty(global.models_dir(), &opts);
    }
    if args.require_all_models {
        pool_of(global, &opts, ModelPool::load)
    } else {
        pool_of(global, &opts, ModelPool::load_available)
    }
}

/// Runs the command line's command; its exit code when it ran (a check may fail), an error when
/// it could not.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve(args) => {
            let pool = serve_pool(&cli.global, &args)?;
            serve::command(pool, args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Models => {
            models::print(&load(&cli.global, None)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(args) => {
            let pool = load(&cli.global, args.variants.clone())?;
            let ok = verify::run(&pool, args.images.as_deref(), args.count as usize)?;
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Eval(args) => {
            let pool = load(&cli.global, args.variants.clone())?;
            eval::run(&pool, &args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(args) => {
            let pool = load(&cli.global, args.variants.clone())?;
            bench::run(&pool, &args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Quantize(args) => {
            let opts = load_options(&cli.global, None)?;
            quantize::run(cli.global.models_dir(), &opts, &args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Classify(args) => {
            let answers = match &args.url {
                Some(url) => classify::run_remote(url, &args)?,
                None => {
                    // Only the chosen variant is loaded when the choice is a name.
                    let variants = args.model.clone().map(|m| vec![m]);
                    let pool = load(&cli.global, variants)?;
                    classify::run_local(pool, classify::local_config(&args)?, &args)?
                }
            };
            if args.json {
                println!("{}", classify::json(&answers, &args.files));
            } else {
                print!("{}", classify::table(&answers, &args.files));
            }
            Ok(if answers.iter().all(|a| a.is_ok()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Healthcheck(args) => {
            let url = args.url();
            let status = client::probe(
                &url,
                Duration::from_millis(args.timeout_ms),
                args.api_key.as_deref(),
            )?;
            if (200..300).contains(&status) {
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("{url}: HTTP {status}");
                Ok(ExitCode::FAILURE)
            }
        }
        Command::Openapi => {
            println!("{}", crate::api::openapi::document());
            Ok(ExitCode::SUCCESS)
        }
        Command::Preprocess(args) => {
            let tier = KernelSet::select(cli.global.kernels)
                .map_err(Error::Catalog)?
                .tier;
            let n = eval::dump_inputs(&args, tier)?;
            println!("wrote {n} images to {}", args.out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::FetchZoo(args) => fetch_zoo::command(&args),
    }
}
