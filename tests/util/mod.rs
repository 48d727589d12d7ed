//! The harness shared by every suite module: nothing in `suite/` talks to a socket, spawns a
//! process or formats an OCI document except through these helpers.

pub mod archive;
pub mod http;
pub mod layout;
pub mod oci;
pub mod s3;
pub mod server;
// The lib's own reader of the test servers' variables, shared rather than copied.
#[path = "../../src/test_services.rs"]
pub mod services;
pub mod store;
pub mod tools;
