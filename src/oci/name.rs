//! Repository names, tags and manifest references, validated by the distribution spec's
//! grammar before any path is formed from them.
//!
//! Name grammar (spec, "Pulling manifests"):
//! `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`
//! Tag grammar: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
//!
//! One restriction beyond the spec: no path component may name a file or folder of the OCI
//! layout (`blobs`, `index.json`, `oci-layout`), because a repository is an OCI layout
//! directory and a child repository with such a name would be its parent's blob store, index
//! or marker file (issue 10).

use crate::digest::{Digest, DigestError};
use std::fmt;
use std::str::FromStr;

/// Longest repository name accepted; the spec bounds host plus name to 255 characters.
pub(crate) const MAX_NAME_LEN: usize = 255;

/// A validated repository name such as `library/alpine`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

/// A validated tag such as `v1.2.3`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

/// What a manifest URL names: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// `/manifests/<tag>`
    Tag(Tag),
    /// `/manifests/<digest>`
    Digest(Digest),
}

/// Why a string is not a valid name, tag or reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The repository name breaks the grammar.
    #[error("repository name {0:?} is invalid: {1}")]
    Repo(String, &'static str),
    /// The tag breaks the grammar.
    #[error("tag {0:?} is invalid")]
    Tag(String),
    /// A reference with a colon that is not a valid digest.
    #[error(transparent)]
    Digest(#[from] DigestError),
}

fn is_lower_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// One path component: alnum runs joined by `.`, `_`, `__` or `-+`.
fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_lower_alnum(b[0]) || !is_lower_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_lower_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_lower_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let allowed = sep == "." || sep == "_" || sep == "__" || (sep.bytes().all(|s| s == b'-'));
        if !allowed {
            return false;
        }
    }
    true
}

impl RepoName {
    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated components.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

/// The OCI image layout's own entries in a repository directory (image-spec `image-layout.md`).
pub(crate) mod layout_entries {
    /// The marker file.
    pub(crate) const OCI_LAYOUT: &str = "oci-layout";
    /// The index.
    pub(crate) const INDEX_JSON: &str = "index.json";
    /// The blob directory.
    pub(crate) const BLOBS: &str = "blobs";
}

/// Why a name component would collide with its parent's OCI layout, if it would.
fn layout_collision(component: &str) -> Option<&'static str> {
    use layout_entries::*;
    match component {
        BLOBS => Some("a path component may not be `blobs` (a layout's blob directory)"),
        INDEX_JSON => Some("a path component may not be `index.json` (a layout's index)"),
        OCI_LAYOUT => Some("a path component may not be `oci-layout` (a layout's marker file)"),
        _ => None,
    }
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let fail = |why| Err(NameError::Repo(s.to_string(), why));
        if s.is_empty() {
            return fail("empty");
        }
        if s.len() > MAX_NAME_LEN {
            return fail("longer than 255 characters");
        }
        for c in s.split('/') {
            if !component_ok(c) {
                return fail("does not match the distribution spec's name grammar");
            }
            if let Some(why) = layout_collision(c) {
                return fail(why);
            }
        }
        Ok(RepoName(s.to_string()))
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Tag {
    /// The tag as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        let first_ok = b
            .first()
            .is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        let rest_ok = b
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c));
        if first_ok && rest_ok && b.len() <= 128 {
            Ok(Tag(s.to_string()))
        } else {
            Err(NameError::Tag(s.to_string()))
        }
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Reference {
    type Err = NameError;

    /// A reference containing `:` must be a digest (tags cannot contain colons).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "library/alpine", "a.b_c__d---e/f0", "x/y/z", "0"] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok}");
        }
        for bad in [
            "",
            "A",
            "a//b",
            "/a",
            "a/",
            "a/../b",
            "..",
            "a/.b",
            "a_",
            "a___b",
            "a..b",
            "a%2fb",
            "a/blobs",
            "blobs/x",
            "x/index.json",
            "index.json/x",
            "w/oci-layout",
            "a b",
            "a:b",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad}");
        }
        assert!("a".repeat(256).parse::<RepoName>().is_err());
    }

    #[test]
    fn tags_and_references() {
        assert!("latest".parse::<Tag>().is_ok());
        assert!("_v1.0-rc".parse::<Tag>().is_ok());
        assert!(".hidden".parse::<Tag>().is_err());
        assert!("-x".parse::<Tag>().is_err());
        assert!("a".repeat(129).parse::<Tag>().is_err());
        assert!("a/b".parse::<Tag>().is_err());
        assert!(matches!("v1".parse::<Reference>(), Ok(Reference::Tag(_))));
        assert!(matches!(
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                .parse::<Reference>(),
            Ok(Reference::Digest(_))
        ));
        assert!("sha256:xyz".parse::<Reference>().is_err());
    }
}
