//! The HTTP API: routes (`route`), handlers returning reply values (`handlers`, `response`),
//! the one error table (`error`), the request abstraction (`request`) and the tiny_http
//! front end with its worker pool (`server`). `Service` is what every request is served from.

pub(crate) mod error;
pub(crate) mod handlers;
pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod route;
pub(crate) mod server;

#[cfg(test)]
mod tests;

use crate::metrics::Metrics;
use crate::storage::Registry;
use std::sync::Arc;

/// What the front end serves: the stores, and the metrics when `extensions.metrics` is on.
pub(crate) struct Service {
    /// The stores and their routes.
    pub registry: Arc<Registry>,
    /// The counters and the path their page is served at; `None` when metrics are off.
    pub metrics: Option<(Metrics, String)>,
}

impl Service {
    /// The counters, when kept.
    pub(crate) fn metrics(&self) -> Option<&Metrics> {
        self.metrics.as_ref().map(|(m, _)| m)
    }
}
