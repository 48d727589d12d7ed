//! `HttpRequest`: what handlers may ask of a request. The server implements it for tiny_http
//! requests; tests implement it for in-memory requests.

use super::route::Method;
use std::io::Read;

/// A request as handlers see it.
pub(crate) trait HttpRequest {
    /// The method.
    fn method(&self) -> Method;
    /// The URL as sent: path and query, not decoded.
    fn url(&self) -> &str;
    /// A header's value by case-insensitive name.
    fn header(&self, name: &str) -> Option<&str>;
    /// The declared Content-Length, if any.
    fn content_length(&self) -> Option<u64>;
    /// The body stream (already de-chunked).
    fn body(&mut self) -> &mut dyn Read;
}

impl HttpRequest for tiny_http::Request {
    fn method(&self) -> Method {
        Method::parse(self.method().as_str())
    }

    fn url(&self) -> &str {
        self.url()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers()
            .iter()
            .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }

    fn content_length(&self) -> Option<u64> {
        self.body_length().map(|n| n as u64)
    }

    fn body(&mut self) -> &mut dyn Read {
        self.as_reader()
    }
}
