//! berth: an OCI registry whose wire protocol is the OCI Distribution Spec and whose disk is
//! the OCI Image Layout, configured with zot's config file.
//!
//! Module map:
//! - `config`: zot's JSON config, read into raw sections and resolved into typed settings.
//! - `digest`: `Digest` and the incremental `Hasher`.
//! - `oci`: repository names, tags, references, manifests and descriptors.
//! - `storage`: registry semantics over the `Driver` trait (`storage::driver`), with
//!   `storage::layout` the only place that forms paths; inline dedupe (hard links or
//!   placeholders) and the start-up dedupe pass and restore;
//!   `storage::Registry` routes repositories to stores (`subPaths`).
//! - `http`: `Route::parse`, handlers returning `Reply` values, the error table, and the
//!   tiny_http front end with its request workers.
//! - `cache`: the caches a store keeps, by concern (`DedupeIndex`: digest → paths;
//!   `UsageLog`: push and pull times; `Markers`), namespaced per store, with the embedded LMDB
//!   implementation, the shared Redis one, and `Outage`, how a store degrades when a cache
//!   is unavailable.
//! - `metrics`: request, repository and cache counters in the Prometheus text format
//!   (`extensions.metrics`), with zot's metric names.
//! - `background`: the one bounded rayon pool for background fan-out.
//! - `app`: wires a config into stores, caches and a running registry.
//! - `root_lock`: one berth process per storage root.
//! - `test_services` (tests only): the variables of the test servers the scripts start.

#![warn(missing_docs, unreachable_pub)]

pub mod app;
pub mod background;
pub mod cache;
pub mod config;
pub mod digest;
mod http;
mod metrics;
pub mod oci;
mod root_lock;
pub mod storage;
#[cfg(test)]
mod test_services;
