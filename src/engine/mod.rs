//! Our inference engine: ONNX import into a plan, the plan run by our kernels, the variant pool
//! and tract as the independent reference.

pub mod catalog;
pub mod import;
pub mod model;
pub mod onnx;
pub mod plan;
pub mod pool;
pub mod reference;
pub mod team;
