//! The HTTP API: routes (`route`), handlers returning reply values (`handlers`, `response`),
//! the one error table (`error`), the request abstraction (`request`) and the tiny_http
//! front end with its worker pool (`server`).

pub(crate) mod error;
pub(crate) mod handlers;
pub(crate) mod request;
pub(crate) mod response;
pub(crate) mod route;
pub(crate) mod server;

#[cfg(test)]
mod tests;
