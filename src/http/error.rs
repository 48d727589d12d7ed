//! `ApiError` and the single table that maps every error to its OCI error code and HTTP
//! status (distribution spec, "Error Codes"). No other code picks a status for an error.

use crate::digest::DigestError;
use crate::oci::name::NameError;
use crate::storage::StoreError;
use crate::storage::driver::DriverError;
use serde_json::{Value, json};

/// The kinds of error the API reports. Each maps to exactly one code and status in `wire`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// Blob unknown to the repository.
    BlobUnknown,
    /// Upload invalid (bad body, bad Content-Range).
    BlobUploadInvalid,
    /// Upload session unknown.
    BlobUploadUnknown,
    /// Digest invalid or not matching the content.
    DigestInvalid,
    /// Manifest references a blob the repository does not hold.
    ManifestBlobUnknown,
    /// Manifest invalid.
    ManifestInvalid,
    /// Manifest larger than the limit.
    ManifestTooLarge,
    /// Manifest unknown.
    ManifestUnknown,
    /// Repository name invalid.
    NameInvalid,
    /// Repository unknown.
    NameUnknown,
    /// Content length does not match.
    SizeInvalid,
    /// Method not allowed on this route.
    MethodNotAllowed,
    /// No such endpoint.
    RouteUnknown,
    /// Byte range cannot be served, or a chunk arrived out of order.
    RangeInvalid,
    /// A pagination `n` that is not a non-negative number.
    PaginationNumberInvalid,
    /// A query string that cannot be decoded.
    QueryInvalid,
    /// Something the request needs is not available yet or for now (distribution's
    /// `UNAVAILABLE`): the client may retry.
    Unavailable,
    /// A fault on our side.
    Internal,
}

impl ErrorKind {
    /// The one table: kind -> (OCI code, HTTP status).
    pub(crate) fn wire(self) -> (&'static str, u16) {
        match self {
            ErrorKind::BlobUnknown => ("BLOB_UNKNOWN", 404),
            ErrorKind::BlobUploadInvalid => ("BLOB_UPLOAD_INVALID", 400),
            ErrorKind::BlobUploadUnknown => ("BLOB_UPLOAD_UNKNOWN", 404),
            ErrorKind::DigestInvalid => ("DIGEST_INVALID", 400),
            ErrorKind::ManifestBlobUnknown => ("MANIFEST_BLOB_UNKNOWN", 400),
            ErrorKind::ManifestInvalid => ("MANIFEST_INVALID", 400),
            ErrorKind::ManifestTooLarge => ("MANIFEST_INVALID", 413),
            ErrorKind::ManifestUnknown => ("MANIFEST_UNKNOWN", 404),
            ErrorKind::NameInvalid => ("NAME_INVALID", 400),
            ErrorKind::NameUnknown => ("NAME_UNKNOWN", 404),
            ErrorKind::SizeInvalid => ("SIZE_INVALID", 400),
            ErrorKind::MethodNotAllowed => ("UNSUPPORTED", 405),
            ErrorKind::RouteUnknown => ("NOT_FOUND", 404),
            ErrorKind::RangeInvalid => ("RANGE_INVALID", 416),
            ErrorKind::PaginationNumberInvalid => ("PAGINATION_NUMBER_INVALID", 400),
            ErrorKind::QueryInvalid => ("UNSUPPORTED", 400),
            ErrorKind::Unavailable => ("UNAVAILABLE", 503),
            ErrorKind::Internal => ("UNKNOWN", 500),
        }
    }
}

/// An error as the API reports it: a kind, a human message and optional detail.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    /// What kind of error (selects code and status).
    pub kind: ErrorKind,
    /// Human-readable message.
    pub message: String,
    /// Optional structured detail.
    pub detail: Option<Value>,
    /// Extra response headers the error needs (`Content-Range` on a 416).
    pub headers: Vec<(&'static str, String)>,
    /// The server-side cause of an internal error: logged, never sent, since it names
    /// files on the server (issue 10).
    pub cause: Option<String>,
}

impl ApiError {
    /// An error of `kind` with `message`.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> ApiError {
        ApiError {
            kind,
            message: message.into(),
            detail: None,
            headers: Vec::new(),
            cause: None,
        }
    }

    /// Adds structured detail.
    pub(crate) fn with_detail(mut self, detail: Value) -> ApiError {
        self.detail = Some(detail);
        self
    }

    /// Adds a response header.
    pub(crate) fn with_header(mut self, name: &'static str, value: String) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// The HTTP status.
    pub(crate) fn status(&self) -> u16 {
        self.kind.wire().1
    }

    /// The spec's error body: `{"errors":[{"code","message","detail"}]}`.
    pub(crate) fn body(&self) -> Vec<u8> {
        let (code, _) = self.kind.wire();
        let mut entry = json!({"code": code, "message": self.message});
        if let Some(detail) = &self.detail {
            entry["detail"] = detail.clone();
        }
        serde_json::to_vec(&json!({ "errors": [entry] })).expect("JSON always serializes")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let message = e.to_string();
        let kind = match &e {
            StoreError::NameUnknown(_) => ErrorKind::NameUnknown,
            StoreError::BlobUnknown(_) => ErrorKind::BlobUnknown,
            StoreError::BlobIsManifest(_) => ErrorKind::MethodNotAllowed,
            StoreError::ManifestUnknown(_) => ErrorKind::ManifestUnknown,
            StoreError::ManifestBlobUnknown(d) => {
                return ApiError::new(ErrorKind::ManifestBlobUnknown, message)
                    .with_detail(json!({ "digest": d.to_string() }));
            }
            StoreError::ManifestInvalid(_) => ErrorKind::ManifestInvalid,
            StoreError::ManifestTooLarge { .. } => ErrorKind::ManifestTooLarge,
            StoreError::DigestMismatch { expected, actual } => {
                return ApiError::new(ErrorKind::DigestInvalid, message).with_detail(
                    json!({ "expected": expected.to_string(), "actual": actual.to_string() }),
                );
            }
            StoreError::UploadUnknown(_) => ErrorKind::BlobUploadUnknown,
            StoreError::UploadOutOfOrder { .. } => ErrorKind::RangeInvalid,
            StoreError::BodyInvalid(_) => ErrorKind::BlobUploadInvalid,
            StoreError::RangeNotSatisfiable { size } => {
                return ApiError::new(ErrorKind::RangeInvalid, message)
                    .with_header("Content-Range", format!("bytes */{size}"));
            }
            StoreError::Driver(DriverError::InvalidPath { .. }) => ErrorKind::NameInvalid,
            // Deletes wait for the start-up pass; the message says why, nothing is broken.
            StoreError::DedupeUnavailable(_) => ErrorKind::Unavailable,
            // The backend is down or slow (DESIGN decision 12): the client may retry; the
            // cause names keys in the bucket, so it is logged, not sent.
            StoreError::Driver(DriverError::Unavailable { .. }) => {
                let mut unavailable = ApiError::new(
                    ErrorKind::Unavailable,
                    "the registry's storage is unavailable; retry later",
                );
                unavailable.cause = Some(message);
                return unavailable;
            }
            StoreError::CorruptLayout { .. } | StoreError::Driver(_) => {
                let mut internal = ApiError::new(
                    ErrorKind::Internal,
                    "the registry's storage failed; its log has the cause",
                );
                internal.cause = Some(message);
                return internal;
            }
        };
        ApiError::new(kind, message)
    }
}

impl From<NameError> for ApiError {
    fn from(e: NameError) -> ApiError {
        let kind = match e {
            NameError::Repo(..) => ErrorKind::NameInvalid,
            NameError::Tag(_) => ErrorKind::ManifestInvalid,
            NameError::Digest(_) => ErrorKind::DigestInvalid,
        };
        ApiError::new(kind, e.to_string())
    }
}

impl From<DigestError> for ApiError {
    fn from(e: DigestError) -> ApiError {
        ApiError::new(ErrorKind::DigestInvalid, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_keep_server_paths_out_of_the_body() {
        let e: ApiError = StoreError::Driver(DriverError::Io {
            driver: "local",
            op: "open",
            path: "/srv/registry/root/app/index.json".into(),
            source: std::io::Error::other("Is a directory"),
        })
        .into();
        let body = String::from_utf8(e.body()).unwrap();
        assert_eq!(e.status(), 500);
        assert!(!body.contains("/srv"), "{body}");
        assert!(
            e.cause
                .unwrap()
                .contains("/srv/registry/root/app/index.json")
        );
    }

    #[test]
    fn an_unavailable_backend_is_a_503_without_its_keys() {
        let e: ApiError = StoreError::Driver(DriverError::Unavailable {
            driver: "s3",
            op: "stat",
            path: "root/app/index.json".into(),
            source: std::io::ErrorKind::TimedOut.into(),
        })
        .into();
        let v: Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(
            (e.status(), v["errors"][0]["code"].as_str()),
            (503, Some("UNAVAILABLE"))
        );
        assert!(!v.to_string().contains("index.json"), "{v}");
        assert!(e.cause.unwrap().contains("root/app/index.json"));
    }

    #[test]
    fn body_is_the_spec_shape() {
        let e = ApiError::new(ErrorKind::BlobUnknown, "nope");
        let v: Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
        assert_eq!(v["errors"][0]["message"], "nope");
        assert_eq!(e.status(), 404);
    }
}
