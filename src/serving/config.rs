//! How the service runs: its limits, and the check that refuses settings it could not work under.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::batcher::BatchPolicy;
use crate::error::{Error, Result};
use crate::pipeline::decode::{DecodeLimits, Resize};

/// The longest deadline `serve` lets a request ask for. There is no flag for it: a request that
/// needs longer than ten minutes is not an image classification. Tests set a shorter one in
/// [`ServiceConfig::max_request_timeout`].
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);
/// Runs of each variant during warm-up: the first pages the weights in, the last one seeds the
/// router's latency.
pub const WARM_UP_RUNS: usize = 3;
/// The deadline of one warm-up run (a cold 1.0_224 batch on a busy host takes well under 1 s).
pub const WARM_UP_DEADLINE: Duration = Duration::from_secs(60);

/// How the service runs.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Batch size and delay limits.
    pub batch: BatchPolicy,
    /// Images each variant's queue holds at most.
    pub max_queue: usize,
    /// Requests handled at once in the whole process; more get 429.
    pub max_concurrent_requests: usize,
    /// Deadline of a request that gives none.
    pub request_timeout: Duration,
    /// Largest deadline a request may ask for.
    pub max_request_timeout: Duration,
    /// Images per request at most.
    pub max_images_per_request: usize,
    /// Byte and pixel limits of each image.
    pub decode_limits: DecodeLimits,
    /// The variant answering requests that select none (default: the most accurate).
    pub default_model: Option<String>,
    /// Engine threads.
    pub engine_threads: usize,
    /// How much the engine threads lower their priority (nice value added, 0..=19).
    pub engine_nice: i32,
    /// Accuracy results to read (default: `eval.json` in the models directory, when present).
    pub eval_results: Option<PathBuf>,
    /// Who changes the served models after start.
    pub model_control: ControlMode,
    /// With [`ControlMode::Poll`]: time between two looks at the models directory.
    pub repository_poll: Duration,
    /// How images come down to the model's size when a request does not say.
    pub resize: Resize,
    /// When more than one batch is due, each engine thread runs one alone (no per-layer
    /// synchronisation) instead of splitting each batch across all of them.
    pub throughput_mode: bool,
}

impl ServiceConfig {
    /// Refuses settings under which the service could not work.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.batch.max_batch == 0 {
            return bad("the batch size must be at least 1".into());
        }
        if self.engine_threads == 0 {
            return bad("at least one engine thread is needed".into());
        }
        if !(0..=19).contains(&self.engine_nice) {
            return bad(format!(
                "engine niceness {}: it must be 0 to 19",
                self.engine_nice
            ));
        }
        if self.max_concurrent_requests == 0 {
            return bad("at least one concurrent request must be allowed".into());
        }
        if self.max_images_per_request > self.max_queue {
            return bad(format!(
                "a request of {} images would never fit a queue of {}: raise the queue bound or \
                 lower the images per request",
                self.max_images_per_request, self.max_queue
            ));
        }
        Ok(())
    }
}

/// Who changes what is served after start (`--model-control-mode`, as Triton names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ControlMode {
    /// Nobody: what loaded at start is served until exit.
    #[default]
    None,
    /// The models directory: rescanned periodically and on SIGHUP.
    Poll,
    /// The repository API: load and unload requests only.
    Explicit,
}

impl ControlMode {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ControlMode::None => "none",
            ControlMode::Poll => "poll",
            ControlMode::Explicit => "explicit",
        }
    }
}

impl FromStr for ControlMode {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(ControlMode::None),
            "poll" => Ok(ControlMode::Poll),
            "explicit" => Ok(ControlMode::Explicit),
            other => Err(format!(
                "model control mode `{other}`: expected none, poll or explicit"
            )),
        }
    }
}
