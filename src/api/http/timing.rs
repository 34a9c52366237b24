//! The `Server-Timing` header of answers: where the request's time went.

use crate::serving::Timings;

/// The W3C `Server-Timing` header for the same timings.
pub fn server_timing(t: &Timings) -> String {
    t.stages()
        .iter()
        .map(|(name, ms)| format!("{name};dur={ms:.3}"))
        .collect::<Vec<_>>()
        .join(", ")
}
