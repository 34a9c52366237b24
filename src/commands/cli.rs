//! Command line and environment configuration. Every flag can also be set by the environment
//! variable named in its help.

use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::commands::fetch_zoo::{download, grid};
use crate::engine::network::Precision;
use crate::kernels::TierChoice;
use crate::pipeline::decode::Resize;
use crate::telemetry::LogFormat;

/// MobileNet v1 classification with our own CPU engine, cross-checked against tract.
#[derive(Debug, Parser)]
#[command(name = "mobilenet-serve", version, about)]
pub struct Cli {
    /// Options shared by every command.
    #[command(flatten)]
    pub global: GlobalOptions,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command.
#[derive(Debug, Clone, Args)]
pub struct GlobalOptions {
    /// Directory holding the model files, ONNX or TFLite (and optionally manifest.json,
    /// imagenet_classes.txt) [default: models; when it holds no model and none is named, the
    /// default model compiled into the binary is served].
    #[arg(long = "models", env = "MODELS_DIR", global = true)]
    pub models_dir: Option<PathBuf>,
    /// Kernel tier: auto (the fastest this CPU supports), avx512, avx2 or scalar.
    #[arg(long, env = "MOBILENET_KERNELS", default_value = "auto", value_parser = parse_tier, global = true)]
    pub kernels: TierChoice,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Input size for manifest-less ONNX files whose input size is symbolic.
    #[arg(long, env = "MOBILENET_RESOLUTION", global = true)]
    pub resolution: Option<usize>,
}

/// The models directory when none is named.
pub const DEFAULT_MODELS_DIR: &str = "models";

impl GlobalOptions {
    /// The models directory: the one named, else [`DEFAULT_MODELS_DIR`].
    pub fn models_dir(&self) -> &Path {
        self.models_dir
            .as_deref()
            .unwrap_or(Path::new(DEFAULT_MODELS_DIR))
    }
}

fn parse_tier(s: &str) -> Result<TierChoice, String> {
    s.parse()
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve classification over HTTP with every variant in memory.
    Serve(ServeArgs),
    /// List the variants found in the models directory.
    Models,
    /// Compare our engine with tract-onnx on every variant; exit 1 on any disagreement.
    Verify(VerifyArgs),
    /// Measure top-1 / top-5 accuracy and latency of every variant on a labelled image folder.
    Eval(EvalArgs),
    /// Time every variant: ms per image, images/s, GFLOP/s and % of this machine's FMA peak.
    Bench(BenchArgs),
    /// Write the preprocessed input tensors of a labelled image folder to a .npy file
    /// (for cross-checks with other runtimes).
    Preprocess(PreprocessArgs),
    /// Quantize a float variant to int8 (per-channel weights, uint8 activations calibrated on
    /// images) into a QDQ ONNX file and a manifest entry that `serve --models DIR` serves.
    Quantize(QuantizeArgs),
    /// Classify image files: in-process with the engine, or with a running server (--url).
    Classify(ClassifyArgs),
    /// GET a running server's probe; exit 0 on a 2xx answer, 1 otherwise (for container
    /// HEALTHCHECKs on images without curl).
    Healthcheck(HealthcheckArgs),
    /// Print the HTTP API's OpenAPI 3.1 description (what `GET /openapi.json` serves).
    Openapi,
    /// Download Google's MobileNet v1 .tflite files (the 2018-08-02 release archives), check
    /// each against the repository's models/tflite/SHA256SUMS, and list them in DEST's
    /// manifest.json; exit 1 if any file failed.
    FetchZoo(FetchZooArgs),
}

/// Arguments of `classify`.
#[derive(Debug, Clone, Args)]
pub struct ClassifyArgs {
    /// Image files (JPEG, PNG, WebP, BMP, GIF).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The variant, by name.
    #[arg(long)]
    pub model: Option<String>,
    /// Width multiplier (with --resolution).
    #[arg(long)]
    pub alpha: Option<f32>,
    /// Input resolution (with --alpha).
    #[arg(long)]
    pub resolution: Option<usize>,
    /// The most accurate variant predicted to answer within this many milliseconds.
    #[arg(long)]
    pub max_latency_ms: Option<f64>,
    /// The cheapest variant with at least this top-1 (percent).
    #[arg(long)]
    pub min_top1: Option<f64>,
    /// When no variant meets the target, answer with the fastest instead of failing.
    #[arg(long)]
    pub fallback_fastest: bool,
    /// Number format, fp32 or int8: of the --alpha/--resolution cell, of the variants a target
    /// chooses from (any when not given), or alone the default variant's cell in it.
    #[arg(long)]
    pub precision: Option<Precision>,
    /// Classes per image.
    #[arg(long, default_value_t = 5)]
    pub top_k: usize,
    /// A running server (http://host:port) to ask instead of classifying in-process.
    #[arg(long, env = "MOBILENET_URL")]
    pub url: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Each image's deadline, in milliseconds (also sent to the server with --url).
    #[arg(long, default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// The server's API key, sent as `Authorization: Bearer` with --url.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// `fast` (a JPEG of at least four times the model's size decoded at 1/2, 1/4 or 1/8 of its
    /// size) or `exact` (the full image, bit-exact with Pillow); default: the server's (with
    /// --url) or `fast`.
    #[arg(long)]
    pub resize: Option<Resize>,
}

/// Arguments of `healthcheck`.
#[derive(Debug, Clone, Args)]
pub struct HealthcheckArgs {
    /// The probe to GET (http:// only); default: /healthz on this host at HTTP_PORT (8000).
    #[arg(long, env = "HEALTHCHECK_URL")]
    pub url: Option<String>,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// The server's API key (for a server run with --auth-health); in a container, the same
    /// API_KEY the server reads.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

impl HealthcheckArgs {
    /// The URL to probe: `--url`, else the liveness probe of a server started with the same
    /// environment (its `HTTP_PORT`), so a container that moves its port stays checked.
    pub fn url(&self) -> String {
        self.url.clone().unwrap_or_else(|| {
            let port = std::env::var("HTTP_PORT").unwrap_or_else(|_| "8000".into());
            format!("http://127.0.0.1:{port}/healthz")
        })
    }
}

/// Arguments of `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: std::net::IpAddr,
    /// HTTP port.
    #[arg(long, env = "HTTP_PORT", default_value_t = 8000)]
    pub http_port: u16,
    /// gRPC port (mobilenet.v1.Classifier, inference.GRPCInferenceService, grpc.health.v1,
    /// reflection).
    #[arg(long, env = "GRPC_PORT", default_value_t = 8001)]
    pub grpc_port: u16,
    /// Comma-separated variant names to load (default: every variant of the models directory).
    #[arg(long, env = "VARIANTS", value_delimiter = ',')]
    pub variants: Option<Vec<String>>,
    /// Refuse to start unless every variant loads. Without it, a missing, corrupt or tampered
    /// model file (sha256 not the expected one) fails only its variants, which /readyz and
    /// /v1/models list as unavailable.
    #[arg(long, env = "REQUIRE_ALL_MODELS")]
    pub require_all_models: bool,
    /// Require `Authorization: Bearer <key>` on inference and model routes (HTTP and gRPC);
    /// at least 16 visible ASCII characters. Prefer the environment variable to the flag, which
    /// other users of the machine can read from the process list.
    #[arg(long, env = "API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// With --api-key, health, readiness and metrics need the key too (probes and scrapers must
    /// then send it).
    #[arg(long, env = "AUTH_HEALTH")]
    pub auth_health: bool,
    /// The variant answering requests that select none (default: the most accurate).
    #[arg(long, env = "DEFAULT_MODEL")]
    pub default_model: Option<String>,
    /// Images per engine batch at most.
    #[arg(long, env = "MAX_BATCH_SIZE", default_value_t = 8,
          value_parser = clap::value_parser!(u64).range(1..=256))]
    pub max_batch_size: u64,
    /// Longest wait, in microseconds, for a batch to fill once its first image is queued. It only
    /// waits while other admitted requests are still being read or decoded: with none on its
    /// way, a partial batch runs at once.
    #[arg(long, env = "MAX_BATCH_DELAY_US", default_value_t = 2000,
          value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub max_batch_delay_us: u64,
    /// Images each variant's queue holds at most; beyond, requests get 429.
    #[arg(long, env = "MAX_QUEUE", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_queue: u64,
    /// Requests handled at once in the whole process; beyond, requests get 429.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_concurrent_requests: u64,
    /// Deadline of requests that give no `timeout_ms`, in milliseconds (504 when it passes).
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub request_timeout_ms: u64,
    /// Largest request body, in bytes (413 beyond).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 10 << 20,
          value_parser = clap::value_parser!(u64).range(1..=1 << 30))]
    pub max_body_bytes: u64,
    /// Largest decoded image, in pixels (413 beyond).
    #[arg(long, env = "MAX_PIXELS", default_value_t = 40_000_000,
          value_parser = clap::value_parser!(u64).range(1..=1 << 32))]
    pub max_pixels: u64,
    /// Images per request at most.
    #[arg(long, env = "MAX_IMAGES_PER_REQUEST", default_value_t = 32,
          value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub max_images_per_request: u64,
    /// Engine threads, which every batch is split across (0: one per available core).
    #[arg(long, env = "ENGINE_THREADS", default_value_t = 0)]
    pub engine_threads: usize,
    /// How much the engine threads lower their priority (nice value added, 0-19). Above 0,
    /// refusals and probes answer a little faster under overload, but any ordinary process in
    /// the same CPU cgroup takes the cores from inference first: raise it where the server has
    /// a cgroup of its own (the Kubernetes manifests set 10).
    #[arg(long, env = "ENGINE_NICE", default_value_t = crate::serving::workers::DEFAULT_ENGINE_NICE,
          value_parser = clap::value_parser!(i32).range(0..=19))]
    pub engine_nice: i32,
    /// Who changes the served models after start: none (what loaded at start stays), poll
    /// (the models directory is rescanned every --repository-poll-secs and on SIGHUP; new,
    /// changed and removed files are loaded, swapped and unloaded) or explicit (only the
    /// repository API's load and unload requests, starting from --load-model).
    #[arg(long, env = "MODEL_CONTROL_MODE", default_value = "none",
          value_parser = ["none", "poll", "explicit"])]
    pub model_control_mode: String,
    /// With --model-control-mode poll: seconds between two looks at the models directory (a
    /// `stat` per file; a change then reads, imports and warms up what changed).
    #[arg(long, env = "REPOSITORY_POLL_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub repository_poll_secs: u64,
    /// How images come down to the model's size when a request does not say: `fast` (a JPEG of
    /// at least four times the resize target is decoded at 1/2, 1/4 or 1/8 of its size in the
    /// DCT domain, then resized) or `exact` (the full image and Pillow's resize, bit-exact with
    /// the reference pipeline; slower on large photos).
    #[arg(long, env = "RESIZE", default_value_t = Resize::Fast)]
    pub resize: Resize,
    /// `on`: when more than one batch is due at once, the engine threads run one each, alone
    /// (no per-layer synchronisation); a lone batch still runs split across all of them.
    /// `off`: every batch is split across all the threads.
    #[arg(long, env = "THROUGHPUT_MODE", default_value = "on", value_parser = ["on", "off"])]
    pub throughput_mode: String,
    /// Threads that decode and preprocess images at most (tokio's blocking pool); 0: twice the
    /// cores, at least 4. They share the cores with the engine threads.
    #[arg(long, env = "DECODE_THREADS", default_value_t = 0,
          value_parser = clap::value_parser!(usize))]
    pub decode_threads: usize,
    /// With --model-control-mode explicit: a variant to load at start (repeatable; none by
    /// default, as in Triton).
    #[arg(long = "load-model", value_name = "NAME")]
    pub load_model: Vec<String>,
    /// After SIGTERM, how long admitted requests may take to finish, in seconds.
    #[arg(long, env = "DRAIN_TIMEOUT_S", default_value_t = 30)]
    pub drain_timeout_s: u64,
    /// Accuracy results written by `eval --json` (default: eval.json in the models directory,
    /// when present; else the manifest's published figures).
    #[arg(long, env = "EVAL_RESULTS")]
    pub eval_results: Option<PathBuf>,
}

/// Arguments of `verify`.
#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Comma-separated variant names (default: all).
    #[arg(long, value_delimiter = ',')]
    pub variants: Option<Vec<String>>,
    /// Folder of images to use as inputs (default: deterministic random tensors).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// Inputs per variant.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub count: u64,
}

/// Arguments of `eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Folder with the images and labels.tsv (file TAB class index 0..999).
    #[arg(long, env = "DATASET_DIR")]
    pub data: PathBuf,
    /// Comma-separated variant names (default: all).
    #[arg(long, value_delimiter = ',')]
    pub variants: Option<Vec<String>>,
    /// Use only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Images per engine call.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub batch: u64,
    /// Variants evaluated in parallel (each on its own thread; latencies then share the cores).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub jobs: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG chart of top-1 against latency here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// `exact` (the full image, Pillow's pipeline: the published accuracies' protocol) or
    /// `fast` (large JPEGs decoded at a reduced scale, as the server's default).
    #[arg(long, default_value_t = Resize::Exact)]
    pub resize: Resize,
}

/// How `quantize` chooses each activation's range from the calibration values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RangeMethodArg {
    /// From the smallest to the largest value seen.
    Minmax,
    /// Each end at --percentile of the values on its side of zero (clips rare outliers).
    Percentile,
}

/// Arguments of `quantize`.
#[derive(Debug, Clone, Args)]
pub struct QuantizeArgs {
    /// The float variant to quantize, by name (any model the models directory serves in fp32).
    #[arg(long)]
    pub variant: String,
    /// Folder of calibration images: taken in labels.tsv order when it has one, else by name.
    #[arg(long, env = "CALIBRATION_DIR")]
    pub calibration: PathBuf,
    /// Calibration images (the first N of the folder).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub calibration_images: u64,
    /// How activation ranges are chosen.
    #[arg(long, value_enum, default_value_t = RangeMethodArg::Minmax)]
    pub method: RangeMethodArg,
    /// With --method percentile: the percentile of each side's values, in (50, 100].
    #[arg(long, default_value_t = 99.99, value_parser = parse_percentile)]
    pub percentile: f64,
    /// Directory to write `<variant>_ptq.onnx` and its manifest.json entry into (made if
    /// needed; other entries of an existing manifest are kept).
    #[arg(long)]
    pub out: PathBuf,
    /// A labelled folder (labels.tsv) on which to report top-1/top-5 before and after.
    #[arg(long)]
    pub eval: Option<PathBuf>,
    /// With --eval: only its first N images.
    #[arg(long)]
    pub eval_limit: Option<usize>,
    /// Write the report (file, digest, accuracies) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

fn parse_percentile(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if p > 50.0 && p <= 100.0 {
        Ok(p)
    } else {
        Err(format!("{p} is not in (50, 100]"))
    }
}

/// Arguments of `preprocess`.
#[derive(Debug, Clone, Args)]
pub struct PreprocessArgs {
    /// Folder with the images and labels.tsv.
    #[arg(long, env = "DATASET_DIR")]
    pub data: PathBuf,
    /// Output size (rho).
    #[arg(long = "size")]
    pub size: usize,
    /// Use only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// The .npy file to write: float32 [N, size, size, 3], NHWC, normalised to [-1, 1].
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Comma-separated variant names (default: all).
    #[arg(long, value_delimiter = ',')]
    pub variants: Option<Vec<String>>,
    /// Comma-separated batch sizes.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub batch: Vec<usize>,
    /// Timed runs per variant and batch size (after one warm-up run).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub iters: u64,
    /// Comma-separated compute-thread counts: each batch is split across that many threads, as
    /// ONNX Runtime's intra-op threads split it (tract is timed with one thread only).
    #[arg(long, value_delimiter = ',', default_value = "1",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Vec<u16>,
    /// Batches in flight at once, each from its own thread and all sharing the compute threads,
    /// as the service's engine threads do; img/s is then their combined throughput.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub streams: u16,
    /// Also time tract on the same files (batch 1, after ours) and print the ratio.
    #[arg(long)]
    pub tract: bool,
    /// Also print where the time goes per layer type, next to the paper's Table 2, then each
    /// layer's ms and GFLOP/s (each layer's fastest of 20 single-image runs).
    #[arg(long)]
    pub layers: bool,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG chart here: ms per image and GFLOP/s against batch size, per variant.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

/// Arguments of `fetch-zoo`.
#[derive(Debug, Clone, Args)]
pub struct FetchZooArgs {
    /// Directory to put the .tflite files and their manifest.json in (made if needed); relative
    /// to the current directory, not to --models.
    #[arg(long, default_value = "models/tflite")]
    pub dest: PathBuf,
    /// Base URL of the release: archives are read from BASE/mobilenet_v1_2018_08_02/<name>.tgz.
    #[arg(long = "from", value_name = "BASE_URL", default_value = grid::DEFAULT_BASE_URL)]
    pub from: String,
    /// Comma-separated names: a cell (mobilenet_v1_0.5_160: its float and _quant files), one
    /// file (mobilenet_v1_0.5_160_quant), or `all` (32 files). Default: the files whose sha256
    /// the repository knows (13).
    #[arg(long, value_delimiter = ',')]
    pub variants: Option<Vec<String>>,
    /// Comma-separated number formats to fetch: fp32 (float files), int8 (_quant files).
    #[arg(long, value_delimiter = ',', default_value = "fp32,int8")]
    pub precision: Vec<Precision>,
    /// Keep files whose sha256 the repository does not know (with a warning; the manifest
    /// records the digest computed here) instead of refusing them. A known digest that does not
    /// match is refused all the same.
    #[arg(long)]
    pub allow_unverified: bool,
    /// Bytes of one archive at most.
    #[arg(long, default_value_t = download::DEFAULT_MAX_BYTES)]
    pub max_bytes: u64,
    /// Seconds to resolve and connect, each.
    #[arg(long, default_value_t = download::DEFAULT_CONNECT_S,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub connect_timeout_s: u64,
    /// Seconds one archive may take, download included.
    #[arg(long, default_value_t = download::DEFAULT_TIMEOUT_S,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub timeout_s: u64,
}
