//! Protocol front ends over the [`crate::service::Service`].

pub mod http;
