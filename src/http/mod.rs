//! The HTTP API: routes (`route`), handlers returning reply values (`handlers`, `response`),
//! the one error table (`error`), the request abstraction (`request`) and the tiny_http
//! front end with its worker pool (`server`).

pub mod error;
pub mod handlers;
pub mod request;
pub mod response;
pub mod route;
pub mod server;

#[cfg(test)]
mod tests;
