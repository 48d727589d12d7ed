//! The harness shared by every suite module: nothing in `suite/` talks to a socket, spawns a
//! process or formats an OCI document except through these helpers.

pub mod archive;
pub mod http;
pub mod layout;
pub mod oci;
pub mod s3;
pub mod server;
pub mod store;
pub mod tools;
