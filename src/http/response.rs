//! `Reply`: the response value every handler returns, so handlers can be tested without a
//! socket. The server turns it into a tiny_http response with an exact Content-Length.

use super::error::ApiError;
use std::io::Read;

/// A response body.
pub(crate) enum Body {
    /// No body.
    Empty,
    /// A small body held in memory (JSON, manifests).
    Bytes(Vec<u8>),
    /// A streamed body of known length (blobs).
    Stream(Box<dyn Read + Send>, u64),
    /// `len` bytes of a file from `offset`, sent with sendfile(2) (blobs on local storage).
    File(std::fs::File, u64, u64),
    /// No body, but a Content-Length announcing what a GET would send (HEAD).
    LengthOnly(u64),
}

/// A complete response: status, headers and body.
pub(crate) struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// Headers in order.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Body,
}

impl Reply {
    /// A reply with `status` and no body.
    pub(crate) fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    /// Adds a header.
    pub(crate) fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    /// Sets a JSON body.
    pub(crate) fn json(self, bytes: Vec<u8>) -> Reply {
        self.bytes("application/json", bytes)
    }

    /// Sets an in-memory body with its Content-Type.
    pub(crate) fn bytes(mut self, content_type: &str, bytes: Vec<u8>) -> Reply {
        self.body = Body::Bytes(bytes);
        self.header("Content-Type", content_type)
    }

    /// Sets the body.
    pub(crate) fn body(mut self, body: Body) -> Reply {
        self.body = body;
        self
    }

    /// Looks a header up by name (case-insensitive).
    #[cfg(test)]
    pub(crate) fn header_value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Reply {
        let mut reply = Reply::new(e.status()).json(e.body());
        reply.headers.extend(e.headers);
        reply
    }
}
