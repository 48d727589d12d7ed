//! Manifests and descriptors: parsing and validating what clients PUT (OCI image manifest and
//! index, Docker schema2 manifest and manifest list), and the `Descriptor`/`ImageIndex` types
//! that `index.json` and the referrers response are made of.
//!
//! Unknown JSON fields are kept (`extra`) so that a layout written by another tool is rewritten
//! without losing anything when berth updates its `index.json`.

use crate::digest::Digest;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// Media types berth knows by name.
pub mod media_type {
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// OCI empty JSON descriptor content (`{}`), used by artifacts.
    pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
    /// The annotation that carries a tag in an OCI layout's `index.json`.
    pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

    /// The manifest types a registry stores (image manifests and indexes, OCI and Docker).
    pub fn is_manifest(media_type: &str) -> bool {
        matches!(
            media_type,
            OCI_MANIFEST | OCI_INDEX | DOCKER_MANIFEST | DOCKER_MANIFEST_LIST
        )
    }

    /// Layers that registries need not hold (they are fetched from `urls`).
    pub fn is_foreign_layer(media_type: &str) -> bool {
        media_type.starts_with("application/vnd.oci.image.layer.nondistributable.")
            || media_type == "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    }
}

/// Annotations: string pairs in key order, serialised as a JSON object. Held as a vector
/// because a map's first node costs ~550 bytes, and a large `index.json` has one per tagged
/// descriptor (issue 11: 100,000 tags held 117 MB, half of it in such nodes).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Annotations(Vec<(String, String)>);

impl Annotations {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).ok().map(|pos| self.0[pos].1.as_str())
    }

    /// Sets `key` to `value`.
    pub fn insert(&mut self, key: &str, value: &str) {
        match self.position(key) {
            Ok(pos) => self.0[pos].1 = value.to_string(),
            Err(pos) => self.0.insert(pos, (key.to_string(), value.to_string())),
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<String> {
        self.position(key).ok().map(|pos| self.0.remove(pos).1)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The pairs, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }
}

impl<const N: usize> From<[(&str, &str); N]> for Annotations {
    fn from(pairs: [(&str, &str); N]) -> Annotations {
        let mut annotations = Annotations::default();
        for (k, v) in pairs {
            annotations.insert(k, v);
        }
        annotations
    }
}

impl Serialize for Annotations {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Annotations {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Annotations, D::Error> {
        // Through a map, so a key given twice keeps its last value as any JSON map would.
        let map = BTreeMap::<String, String>::deserialize(deserializer)?;
        let mut pairs: Vec<(String, String)> = map.into_iter().collect();
        pairs.shrink_to_fit();
        Ok(Annotations(pairs))
    }
}

/// An OCI content descriptor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Size in bytes of the referenced content.
    pub size: u64,
    /// Artifact type, for manifests that declare one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Annotations; in `index.json` the tag lives here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<Annotations>,
    /// Any other field (platform, urls, data, ...), kept as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Descriptor {
    /// A plain descriptor with no annotations.
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Descriptor {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            artifact_type: None,
            annotations: None,
            extra: Map::new(),
        }
    }

    /// The tag this descriptor carries in an OCI layout's `index.json`, if any.
    pub fn tag(&self) -> Option<&str> {
        self.annotations
            .as_ref()?
            .get(media_type::REF_NAME_ANNOTATION)
    }
}

/// An OCI image index: the shape of `index.json` and of a referrers response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// Always 2.
    pub schema_version: u32,
    /// `application/vnd.oci.image.index.v1+json` when written by berth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The descriptors.
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
    /// Any other field, kept as written.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ImageIndex {
    /// An empty index, as berth writes for a new repository or an empty referrers list.
    pub fn empty() -> ImageIndex {
        ImageIndex {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.to_string()),
            manifests: Vec::new(),
            extra: Map::new(),
        }
    }
}

/// Whether a manifest lists other manifests or describes one image/artifact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// OCI image manifest or Docker schema2 manifest.
    Image,
    /// OCI image index or Docker manifest list.
    Index,
}

/// A validated manifest: what the store needs to know about it.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The media type it was stored with.
    pub media_type: String,
    /// Image or index.
    pub kind: ManifestKind,
    /// The config descriptor (image manifests).
    pub config: Option<Descriptor>,
    /// Layers (image manifests) or child manifests (indexes).
    pub children: Vec<Descriptor>,
    /// The `subject` descriptor, for referrers.
    pub subject: Option<Descriptor>,
    /// `artifactType`, or for image manifests without one, the config's media type.
    pub artifact_type: Option<String>,
    /// Top-level annotations.
    pub annotations: Option<Annotations>,
}

/// Why bytes are not an acceptable manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub String);

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<Value>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Value>,
    layers: Option<Value>,
    manifests: Option<Value>,
    subject: Option<Value>,
    annotations: Option<Annotations>,
}

fn descriptor(value: Value, what: &str) -> Result<Descriptor, ManifestError> {
    serde_json::from_value(value).map_err(|e| ManifestError(format!("{what}: {e}")))
}

fn descriptors(value: Value, what: &str) -> Result<Vec<Descriptor>, ManifestError> {
    serde_json::from_value(value).map_err(|e| ManifestError(format!("{what}: {e}")))
}

fn kind_of(media_type: &str) -> Option<ManifestKind> {
    match media_type {
        media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST => Some(ManifestKind::Image),
        media_type::OCI_INDEX | media_type::DOCKER_MANIFEST_LIST => Some(ManifestKind::Index),
        _ => None,
    }
}

impl Manifest {
    /// Parses and validates manifest bytes sent with `content_type` (the request's
    /// Content-Type, if any). The body's own `mediaType`, when present, must agree with it.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Manifest, ManifestError> {
        let raw: RawManifest = serde_json::from_slice(bytes)
            .map_err(|e| ManifestError(format!("manifest is not a JSON object: {e}")))?;
        if raw.schema_version != Some(Value::from(2)) {
            return Err(ManifestError(
                "schemaVersion must be 2 (schema1 manifests are not supported)".into(),
            ));
        }
        // Content-Type parameters (`; charset=...`) are not part of the media type.
        let header = content_type
            .map(|c| c.split(';').next().unwrap_or("").trim())
            .filter(|c| kind_of(c).is_some());
        let media_type = match (header, raw.media_type.as_deref()) {
            (Some(h), Some(b)) if h != b => {
                return Err(ManifestError(format!(
                    "Content-Type {h} does not match the manifest's mediaType {b}"
                )));
            }
            (Some(h), _) => h.to_string(),
            (None, Some(b)) if kind_of(b).is_some() => b.to_string(),
            (None, Some(b)) => {
                return Err(ManifestError(format!("unsupported manifest mediaType {b}")));
            }
            // No type anywhere: the OCI spec lets mediaType be omitted, so infer it.
            (None, None) if raw.manifests.is_some() => media_type::OCI_INDEX.to_string(),
            (None, None) if raw.config.is_some() => media_type::OCI_MANIFEST.to_string(),
            (None, None) => {
                return Err(ManifestError(
                    "cannot tell the manifest type: no Content-Type, mediaType, config or manifests"
                        .into(),
                ));
            }
        };
        let kind = kind_of(&media_type).expect("media type was checked above");
        let subject = raw.subject.map(|s| descriptor(s, "subject")).transpose()?;
        let manifest = match kind {
            ManifestKind::Image => {
                let config = descriptor(
                    raw.config
                        .ok_or_else(|| ManifestError("image manifest has no config".into()))?,
                    "config",
                )?;
                let layers = match raw.layers {
                    Some(l) => descriptors(l, "layers")?,
                    None => {
                        return Err(ManifestError("image manifest has no layers array".into()));
                    }
                };
                let artifact_type = raw
                    .artifact_type
                    .clone()
                    .or_else(|| Some(config.media_type.clone()));
                Manifest {
                    media_type,
                    kind,
                    config: Some(config),
                    children: layers,
                    subject,
                    artifact_type,
                    annotations: raw.annotations,
                }
            }
            ManifestKind::Index => {
                let children = descriptors(
                    raw.manifests
                        .ok_or_else(|| ManifestError("index has no manifests array".into()))?,
                    "manifests",
                )?;
                Manifest {
                    media_type,
                    kind,
                    config: None,
                    children,
                    subject,
                    artifact_type: raw.artifact_type,
                    annotations: raw.annotations,
                }
            }
        };
        Ok(manifest)
    }

    /// Blobs a registry must already hold for this manifest to be accepted: config and
    /// distributable layers of an image, child manifests of an index. Foreign layers are
    /// fetched by clients from their `urls`, so they are not required.
    pub fn required_content(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(
            self.children
                .iter()
                .filter(|d| !media_type::is_foreign_layer(&d.media_type)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn annotations_read_and_write_as_a_json_object_in_key_order() {
        let mut a: Annotations = serde_json::from_str(r#"{"b":"1","a":"2","b":"3"}"#).unwrap();
        assert_eq!(
            a.get("b"),
            Some("3"),
            "a key given twice keeps its last value"
        );
        a.insert("c", "4");
        a.insert("a", "5");
        assert_eq!(a.remove("b").as_deref(), Some("3"));
        assert_eq!(a.get("b"), None);
        assert_eq!(serde_json::to_string(&a).unwrap(), r#"{"a":"5","c":"4"}"#);
        assert!(Annotations::default().is_empty() && !a.is_empty());
    }

    fn image(media: Option<&str>) -> Vec<u8> {
        let mut v = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D, "size": 0},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D, "size": 0}],
            "subject": {"mediaType": media_type::OCI_MANIFEST, "digest": D, "size": 1}
        });
        if let Some(m) = media {
            v["mediaType"] = m.into();
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn parses_image_manifest() {
        let m = Manifest::parse(&image(Some(media_type::OCI_MANIFEST)), None).unwrap();
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.required_content().count(), 2);
        assert_eq!(m.subject.unwrap().size, 1);
        assert_eq!(
            m.artifact_type.as_deref(),
            Some("application/vnd.oci.image.config.v1+json")
        );
        let inferred = Manifest::parse(&image(None), None).unwrap();
        assert_eq!(inferred.media_type, media_type::OCI_MANIFEST);
    }

    #[test]
    fn rejects_bad_manifests() {
        for (bytes, ct) in [
            (b"not json".to_vec(), None),
            (b"{\"schemaVersion\":1}".to_vec(), None),
            (
                image(Some(media_type::OCI_MANIFEST)),
                Some(media_type::OCI_INDEX),
            ),
            (image(Some("text/plain")), None),
            (
                b"{\"schemaVersion\":2,\"config\":{\"digest\":\"x\"},\"layers\":[]}".to_vec(),
                None,
            ),
            (
                b"{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\"}"
                    .to_vec(),
                None,
            ),
        ] {
            assert!(
                Manifest::parse(&bytes, ct).is_err(),
                "{}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn index_round_trips_unknown_fields() {
        let text = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{D}","size":3,"platform":{{"os":"linux"}}}}],"annotations":{{"x":"y"}}}}"#,
            media_type::OCI_MANIFEST
        );
        let index: ImageIndex = serde_json::from_str(&text).unwrap();
        let again: Value = serde_json::to_value(&index).unwrap();
        assert_eq!(again["manifests"][0]["platform"]["os"], "linux");
        assert_eq!(again["annotations"]["x"], "y");
    }
}
