//! The OCI vocabulary berth speaks: repository names, tags and references (`name`), and
//! manifests, descriptors and media types (`manifest`).

pub(crate) mod manifest;
pub(crate) mod name;

pub use manifest::{Annotations, Descriptor, ImageIndex, Manifest, ManifestKind, media_type};
pub use name::{Reference, RepoName, Tag};
