//! The integration test binary: every test here starts a real `berth` process (the binary
//! cargo built) on a temporary root and talks to it over loopback HTTP, as a client would.
//!
//! Layout: `util/` is the harness (process control, a raw HTTP/1.1 client, OCI fixtures,
//! on-disk checks, external-tool gating); `suite/` holds the tests, one module per concern.
//! Both are directories without a `main.rs`, so cargo builds them only as part of this one
//! binary (see the `[[test]]` entry in Cargo.toml).

mod suite;
mod util;
