//! `mobilenet-serve classify FILE...`: classifies images from the terminal, either in-process
//! (the same service as `serve`: router, batcher, engine threads, no socket) or against a running
//! server (`--url`). Prints a table, or JSON with `--json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::commands::cli::{ClassifyArgs, ServeArgs};
use crate::commands::client;
use crate::engine::network::Precision;
use crate::engine::pool::ModelPool;
use crate::error::{Error, Result};
use crate::pipeline::decode::Resize;
use crate::serving::router::{Selection, SelectionParams};
use crate::serving::{ClassifyRequest, Service, ServiceConfig, Timings};

/// Protocol label of in-process requests in the metrics.
const PROTOCOL: &str = "cli";

/// One predicted class, as printed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// ImageNet class index.
    pub index: usize,
    /// Class name.
    pub label: String,
    /// Softmax probability.
    pub score: f32,
}

/// The answer for one file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileAnswer {
    /// The file.
    #[serde(default)]
    pub file: PathBuf,
    /// The variant that answered.
    pub model: String,
    /// The top-k classes, best first.
    pub predictions: Vec<Row>,
    /// Whether the latency/accuracy target was met, when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_met: Option<bool>,
    /// Where the time went, in milliseconds.
    pub timings_ms: Timings,
}

/// The selection fields of the arguments, checked the way the HTTP query is.
fn selection_params(args: &ClassifyArgs) -> SelectionParams {
    SelectionParams {
        model: args.model.clone(),
        alpha: args.alpha,
        resolution: args.resolution,
        max_latency_ms: args.max_latency_ms,
        min_top1: args.min_top1,
        fallback_fastest: args.fallback_fastest,
        precision: args.precision,
    }
}

/// Classifies every file in-process with `pool`; one result per file, in order.
pub fn run_local(
    pool: ModelPool,
    config: ServiceConfig,
    args: &ClassifyArgs,
) -> Result<Vec<Result<FileAnswer>>> {
    let selection = selection_params(args).selection()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Internal(format!("cannot start the async runtime: {e}")))?;
    let service = Service::new(pool, config)?;
    let answers = runtime.block_on(async {
        // A latency target needs every variant measured first, as the server does at start.
        if matches!(selection, Selection::Target { .. }) {
            service.warm_up().await?;
        }
        let mut answers = Vec::with_capacity(args.files.len());
        for file in &args.files {
            answers.push(classify_local(&service, file, &selection, args).await);
        }
        Ok::<_, Error>(answers)
    });
    service.stop_engine();
    answers
}

async fn classify_local(
    service: &Arc<Service>,
    file: &Path,
    selection: &Selection,
    args: &ClassifyArgs,
) -> Result<FileAnswer> {
    let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
    let admission = service.admit(PROTOCOL)?;
    let request = ClassifyRequest {
        images: vec![Bytes::from(bytes)],
        selection: selection.clone(),
        top_k: args.top_k,
        timeout: None,
        resize: args.resize,
    };
    let mut answer = service.classify(admission, request).await?;
    Ok(FileAnswer {
        file: file.to_path_buf(),
        model: answer.model,
        predictions: answer
            .predictions
            .pop()
            .unwrap_or_default()
            .into_iter()
            .map(|p| Row {
                index: p.index,
                label: p.label,
                score: p.score,
            })
            .collect(),
        target_met: answer.target_met,
        timings_ms: answer.timings,
    })
}

/// The query string of `POST /classify` for the arguments.
fn query(args: &ClassifyArgs) -> Result<String> {
    #[derive(Serialize)]
    struct Query<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        model: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        alpha: Option<f32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        resolution: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        max_latency_ms: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        min_top1: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        fallback: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        precision: Option<Precision>,
        top_k: usize,
        timeout_ms: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        resize: Option<Resize>,
    }
    // Checked here too, so that a mistake is reported before any upload.
    selection_params(args).selection()?;
    serde_urlencoded::to_string(Query {
        model: args.model.as_deref(),
        alpha: args.alpha,
        resolution: args.resolution,
        max_latency_ms: args.max_latency_ms,
        min_top1: args.min_top1,
        fallback: args.fallback_fastest.then_some("fastest"),
        precision: args.precision,
        top_k: args.top_k,
        timeout_ms: args.timeout_ms,
        resize: args.resize,
    })
    .map_err(|e| Error::Internal(format!("query: {e}")))
}

/// Classifies every file with the server at `base` (`http://host:port`); one result per file.
pub fn run_remote(base: &str, args: &ClassifyArgs) -> Result<Vec<Result<FileAnswer>>> {
    let url = format!("{}/classify?{}", base.trim_end_matches('/'), query(args)?);
    let timeout = Duration::from_millis(args.timeout_ms);
    Ok(args
        .files
        .iter()
        .map(|file| {
            let bytes = std::fs::read(file).map_err(|e| Error::io(file, e))?;
            let reply = client::request(
                "POST",
                &url,
                Some("application/octet-stream"),
                &bytes,
                timeout,
                args.api_key.as_deref(),
            )?;
            if reply.status != 200 {
                let message = serde_json::from_slice::<serde_json::Value>(&reply.body)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| String::from_utf8_lossy(&reply.body).into_owned());
                let message = format!("the server answered {}: {message}", reply.status);
                // The client's mistakes read as such; the server's state as unavailability.
                return Err(
                    if (400..500).contains(&reply.status) && reply.status != 429 {
                        Error::BadRequest(message)
                    } else {
                        Error::Unavailable(message)
                    },
                );
            }
            let mut answer: FileAnswer = serde_json::from_slice(&reply.body)
                .map_err(|e| Error::Internal(format!("unexpected answer from {url}: {e}")))?;
            answer.file = file.clone();
            Ok(answer)
        })
        .collect())
}

/// The human-readable table of the answers (errors included, one line each).
pub fn table(answers: &[Result<FileAnswer>], files: &[PathBuf]) -> String {
    let mut out = String::new();
    for (answer, file) in answers.iter().zip(files) {
        match answer {
            Ok(a) => {
                let target = match a.target_met {
                    Some(true) => ", target met",
                    Some(false) => ", target NOT met",
                    None => "",
                };
                out.push_str(&format!(
                    "{}  ({}, {:.2} ms{target})\n",
                    file.display(),
                    a.model,
                    a.timings_ms.total
                ));
                for (rank, p) in a.predictions.iter().enumerate() {
                    out.push_str(&format!(
                        "  {:>2}. {:<32} {:>6.2}%  (class {})\n",
                        rank + 1,
                        p.label,
                        p.score * 100.0,
                        p.index
                    ));
                }
            }
            Err(e) => out.push_str(&format!("{}  error: {e}\n", file.display())),
        }
    }
    out
}

/// The answers as a JSON array (errors as `{"file", "error"}`).
pub fn json(answers: &[Result<FileAnswer>], files: &[PathBuf]) -> String {
    let items: Vec<serde_json::Value> = answers
        .iter()
        .zip(files)
        .map(|(answer, file)| match answer {
            Ok(a) => serde_json::to_value(a).unwrap_or_default(),
            Err(e) => serde_json::json!({ "file": file, "error": e.to_string() }),
        })
        .collect();
    serde_json::to_string_pretty(&items).unwrap_or_default()
}

/// The service settings of in-process `classify`: those `serve` would run with here (its
/// defaults and environment), with `classify`'s deadline.
pub fn local_config(args: &ClassifyArgs) -> Result<ServiceConfig> {
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let defaults = <Defaults as clap::Parser>::try_parse_from(["serve"])
        .map_err(|e| Error::Config(format!("the serve settings of the environment: {e}")))?;
    let mut config = super::serve::service_config(&defaults.serve);
    config.request_timeout = Duration::from_millis(args.timeout_ms);
    config.max_request_timeout = config.max_request_timeout.max(config.request_timeout);
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ClassifyArgs {
        ClassifyArgs {
            files: vec![],
            model: None,
            alpha: None,
            resolution: None,
            max_latency_ms: None,
            min_top1: None,
            fallback_fastest: false,
            precision: None,
            top_k: 3,
            url: None,
            json: false,
            timeout_ms: 1000,
            api_key: None,
            resize: None,
        }
    }

    #[test]
    fn the_query_carries_the_selection_and_refuses_contradictions() {
        let mut a = args();
        a.max_latency_ms = Some(5.0);
        a.fallback_fastest = true;
        assert_eq!(
            query(&a).unwrap(),
            "max_latency_ms=5.0&fallback=fastest&top_k=3&timeout_ms=1000"
        );
        a.model = Some("mobilenet_v1_0.25_128".into());
        assert!(query(&a).is_err(), "a name and a target at once");
        a.model = None;
        a.precision = Some(Precision::Int8);
        assert_eq!(
            query(&a).unwrap(),
            "max_latency_ms=5.0&fallback=fastest&precision=int8&top_k=3&timeout_ms=1000"
        );
        let mut b = args();
        b.alpha = Some(0.5);
        assert!(query(&b).is_err(), "alpha without resolution");
    }

    #[test]
    fn tables_show_each_file_and_each_error() {
        let answer = FileAnswer {
            file: "cat.jpg".into(),
            model: "m".into(),
            predictions: vec![Row {
                index: 281,
                label: "tabby".into(),
                score: 0.5,
            }],
            target_met: Some(true),
            timings_ms: Timings::default(),
        };
        let files = vec![PathBuf::from("cat.jpg"), PathBuf::from("bad.jpg")];
        let answers = vec![Ok(answer), Err(Error::Undecodable("junk".into()))];
        let t = table(&answers, &files);
        assert!(t.contains("cat.jpg  (m, 0.00 ms, target met)"), "{t}");
        assert!(t.contains("1. tabby"), "{t}");
        assert!(t.contains("50.00%  (class 281)"), "{t}");
        assert!(
            t.contains("bad.jpg  error: cannot decode image: junk"),
            "{t}"
        );
        let j: serde_json::Value = serde_json::from_str(&json(&answers, &files)).unwrap();
        assert_eq!(j[0]["predictions"][0]["label"], "tabby");
        assert_eq!(j[1]["error"], "cannot decode image: junk");
    }
}
