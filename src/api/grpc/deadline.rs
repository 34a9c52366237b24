//! Deadlines of gRPC calls: the client's `grpc-timeout` header, and how it combines with the
//! timeout a message asks for.

use std::time::Duration;

use tonic::metadata::MetadataMap;

use crate::error::{Error, Result};

/// Our deadline for a client's `grpc-timeout` header (`<up to 8 digits><H|M|S|m|u|n>`): a
/// little earlier than the client's, because tonic's own timeout answers CANCELLED at the
/// client's instant, and the client should learn DEADLINE_EXCEEDED from us first.
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let timeout = parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)?;
    let margin = (timeout / 10).min(Duration::from_millis(20));
    Some(timeout - margin)
}

fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A request's timeout: the sooner of the one its message asks for and the client's
/// grpc-timeout (`deadline`). A grpc-timeout beyond what the server allows (`longest`) is capped
/// rather than refused; one that ran out already is DEADLINE_EXCEEDED.
pub fn request_timeout(
    asked: Option<Duration>,
    deadline: Option<Duration>,
    longest: Duration,
) -> Result<Option<Duration>> {
    if deadline.is_some_and(|d| d.is_zero()) {
        return Err(Error::DeadlineExceeded(
            "the grpc-timeout had run out on arrival".into(),
        ));
    }
    Ok(match (asked, deadline) {
        (None, d) => d.map(|d| d.min(longest)),
        (Some(asked), d) => Some(d.map_or(asked, |d| d.min(asked))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse_grpc_timeout("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "m", "10", "10x", "-1m", "123456789m", "1.5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad}");
        }
    }
}
