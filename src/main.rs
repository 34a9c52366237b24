//! The `mobilenet-serve` binary: parse the command line, set up logging, run the command.

#![deny(clippy::unwrap_used, clippy::expect_used)]

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use mobilenet_serve::api::auth::{ApiKey, Auth};
use mobilenet_serve::commands::cli::{ClassifyArgs, ServeArgs};
use mobilenet_serve::commands::cli::{Cli, Command, GlobalOptions};
use mobilenet_serve::commands::client;
use mobilenet_serve::commands::{bench, classify, eval, serve, verify};
use mobilenet_serve::engine::catalog::format_alpha;
use mobilenet_serve::engine::pool::{LoadOptions, ModelPool};
use mobilenet_serve::kernels::KernelSet;
use mobilenet_serve::pipeline::decode::DecodeLimits;
use mobilenet_serve::serving::batcher::BatchPolicy;
use mobilenet_serve::serving::{Service, ServiceConfig};
use mobilenet_serve::{telemetry, Error};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands whose output is the answer itself log only warnings unless asked.
    let level = match cli.command {
        Command::Classify(_) | Command::Healthcheck(_) | Command::Openapi => "warn",
        _ => "info",
    };
    telemetry::init(cli.global.log_format, level);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_options(
    global: &GlobalOptions,
    variants: Option<Vec<String>>,
) -> Result<LoadOptions, Error> {
    let kernels = KernelSet::select(global.kernels).map_err(Error::Catalog)?;
    tracing::info!(tier = %kernels.tier, "kernels selected");
    Ok(LoadOptions {
        variants,
        resolution: global.resolution,
        kernels,
    })
}

/// Every variant asked for, or an error.
fn load(global: &GlobalOptions, variants: Option<Vec<String>>) -> Result<ModelPool, Error> {
    ModelPool::load(&global.models_dir, &load_options(global, variants)?)
}

fn serve(global: &GlobalOptions, args: ServeArgs) -> Result<(), Error> {
    // Validated here, not by clap, whose errors would print the rejected value: the secret.
    let key = args.api_key.as_deref().map(ApiKey::new).transpose()?;
    let opts = load_options(global, args.variants.clone())?;
    let pool = if args.require_all_models {
        ModelPool::load(&global.models_dir, &opts)?
    } else {
        ModelPool::load_available(&global.models_dir, &opts)?
    };
    for u in pool.unavailable() {
        tracing::error!(variant = %u.name, file = %u.file.display(), error = %u.error,
            "variant not served: it failed to load");
    }
    let unverified: Vec<&str> = pool
        .variants()
        .iter()
        .filter(|v| !v.verified)
        .map(|v| v.spec.name.as_str())
        .collect();
    if !unverified.is_empty() {
        tracing::warn!(variants = %unverified.join(","),
            "no expected sha256 (manifest or SHA256SUMS): model files not verified");
    }
    let mut config = service_config(&args);
    config.auth.key = key;
    let engine_threads = config.engine_threads;
    tracing::info!(variants = pool.variants().len(), engine_threads, "starting");
    let service = Service::new(pool, config, true)?;
    // Decoding runs on the blocking pool. Tokio would grow it to 512 threads under overload,
    // each decoding into its own buffers on the same cores; a few threads keep the work and
    // the memory bounded (requests beyond them wait as encoded bytes, already bounded by the
    // in-flight limit).
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads((2 * cores).max(4))
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(serve::run(
        service,
        args.host,
        args.http_port,
        args.grpc_port,
        Duration::from_secs(args.drain_timeout_s),
    ))
}

/// The service settings of `serve`'s arguments.
fn service_config(args: &ServeArgs) -> ServiceConfig {
    ServiceConfig {
        batch: BatchPolicy {
            max_batch: args.max_batch_size as usize,
            max_delay: Duration::from_micros(args.max_batch_delay_us),
        },
        max_queue: args.max_queue as usize,
        max_concurrent_requests: args.max_concurrent_requests as usize,
        request_timeout: Duration::from_millis(args.request_timeout_ms),
        max_request_timeout: Duration::from_secs(600),
        max_images_per_request: args.max_images_per_request as usize,
        decode_limits: DecodeLimits {
            max_bytes: args.max_body_bytes as usize,
            max_pixels: args.max_pixels,
        },
        default_model: args.default_model.clone(),
        engine_threads: match args.engine_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        },
        eval_results: args.eval_results.clone(),
        auth: Auth {
            key: None,
            protect_health: args.auth_health,
        },
    }
}

/// The service settings of in-process `classify`: those `serve` would run with here (its
/// defaults and environment), with `classify`'s deadline.
fn local_config(args: &ClassifyArgs) -> Result<ServiceConfig, Error> {
    #[derive(Parser)]
    struct Defaults {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let defaults = Defaults::try_parse_from(["serve"])
        .map_err(|e| Error::Config(format!("the serve settings of the environment: {e}")))?;
    let mut config = service_config(&defaults.serve);
    config.request_timeout = Duration::from_millis(args.timeout_ms);
    config.max_request_timeout = config.max_request_timeout.max(config.request_timeout);
    Ok(config)
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    match cli.command {
        Command::Serve(args) => {
            serve(&cli.global, args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Models => {
            let pool = load(&cli.global, None)?;
            println!(
                "{:<24} {:>5} {:>5} {:>8} {:>10} {:>9} {:>8}  file",
                "name", "alpha", "rho", "classes", "mult-adds", "params", "top-1*"
            );
            for v in pool.variants() {
                let s = &v.spec;
                let plan = v.model.plan();
                println!(
                    "{:<24} {:>5} {:>5} {:>8} {:>9.1}M {:>8.2}M {:>8}  {}",
                    s.name,
                    format_alpha(s.alpha),
                    s.resolution,
                    s.num_classes,
                    plan.mult_adds(s.resolution, s.resolution)? as f64 / 1e6,
                    plan.params() as f64 / 1e6,
                    s.published_top1
                        .map(|t| format!("{t:.1}%"))
                        .unwrap_or_else(|| "-".into()),
                    s.file.display()
                );
            }
            println!(
                "{} variants (* published TF-slim top-1)",
                pool.variants().len()
            );
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
        Command::Classify(args) => {
            let answers = match &args.url {
                Some(url) => classify::run_remote(url, &args)?,
                None => {
                    // Only the chosen variant is loaded when the choice is a name.
                    let variants = args.model.clone().map(|m| vec![m]);
                    let pool = load(&cli.global, variants)?;
                    classify::run_local(pool, local_config(&args)?, &args)?
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
            println!("{}", mobilenet_serve::api::openapi::document());
            Ok(ExitCode::SUCCESS)
        }
        Command::Preprocess(args) => {
            let n = eval::dump_inputs(&args)?;
            println!("wrote {n} images to {}", args.out.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
