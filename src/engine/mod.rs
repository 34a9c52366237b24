//! Our inference engine: models and how to run them. ONNX import into a plan, the plan run by
//! our kernels (on one thread or a team, whose work `schedule` cuts into parts), the catalogue
//! and pool of variants, and tract as the independent reference with the cross-check against it.
//! Knows no queue, request or transport: uses `kernels`, `pipeline` and `error` only.

pub mod catalog;
pub mod crosscheck;
pub mod embedded;
pub mod import;
pub mod model;
pub mod network;
pub mod onnx;
pub mod plan;
pub mod pool;
pub mod ptq;
pub mod quant;
pub mod reference;
pub mod repository;
pub mod schedule;
pub mod team;
pub mod workspace;
