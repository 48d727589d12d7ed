//! The referrers API's state: per repository, which listed manifests name which subject, kept
//! for the `index.json` version it was built from and shared by every request, and the
//! response streamed from descriptors serialised once.
//!
//! Why (issue 10): with 50,000 referrers of one subject, every request read and parsed every
//! manifest of the repository and built the 10 MB response in memory, adding ~57 MB of RSS per
//! request that the allocator kept. Now a request costs a lookup and a stream of shared bytes;
//! a new `index.json` version costs reading only the manifests not summarised before.

use super::locks::Striped;
use crate::digest::Digest;
use crate::oci::{Descriptor, Manifest, RepoName, media_type};
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, PoisonError, RwLock};

/// Repositories whose referrers are kept per stripe; a stripe that grows past this starts
/// afresh, so the memory is bounded whatever the number of repositories.
const REPOS_PER_STRIPE: usize = 16;

/// One referrer, as the referrers index lists it.
#[derive(Debug)]
pub(super) struct Referrer {
    /// Its `artifactType`, for the filter.
    artifact_type: Option<String>,
    /// Its descriptor, serialised.
    json: Box<[u8]>,
}

/// What a listed manifest is to the referrers API: the subject it names, with its entry.
type Summary = Option<(Digest, Arc<Referrer>)>;

/// The referrers of one repository for one version of its `index.json`.
#[derive(Default)]
pub(super) struct RepoReferrers {
    /// Per listed manifest digest; kept across versions, since content never changes.
    summaries: HashMap<Digest, Summary>,
    by_subject: HashMap<Digest, Vec<Arc<Referrer>>>,
}

/// Built referrers per repository, with the `index.json` fingerprint they were built from.
type Built = HashMap<RepoName, (u64, Arc<RepoReferrers>)>;

/// Referrers per repository, for the `index.json` version they were built from.
#[derive(Default)]
pub(super) struct ReferrerCache {
    stripes: Striped<RwLock<Built>>,
}

impl ReferrerCache {
    /// The referrers of `repo` for the index with `fingerprint`, built with `read` (which
    /// returns a manifest's bytes, `None` when they are gone) if this version is not known
    /// yet. A read that fails otherwise fails the call and nothing is kept, so a passing I/O
    /// error cannot hide a referrer for as long as the index stays the same.
    pub(super) fn get<E>(
        &self,
        repo: &RepoName,
        fingerprint: u64,
        listed: &[Descriptor],
        read: impl Fn(&Digest) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<Arc<RepoReferrers>, E> {
        let stripe = self.stripes.get(repo);
        let previous = {
            let map = stripe.read().unwrap_or_else(PoisonError::into_inner);
            match map.get(repo) {
                Some((f, built)) if *f == fingerprint => return Ok(Arc::clone(built)),
                Some((_, built)) => Some(Arc::clone(built)),
                None => None,
            }
        };
        let built = Arc::new(RepoReferrers::build(listed, previous.as_deref(), read)?);
        let mut map = stripe.write().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= REPOS_PER_STRIPE && !map.contains_key(repo) {
            map.clear();
        }
        map.insert(repo.clone(), (fingerprint, Arc::clone(&built)));
        Ok(built)
    }
}

impl RepoReferrers {
    fn build<E>(
        listed: &[Descriptor],
        previous: Option<&RepoReferrers>,
        read: impl Fn(&Digest) -> Result<Option<Vec<u8>>, E>,
    ) -> Result<RepoReferrers, E> {
        let mut built = RepoReferrers::default();
        for d in listed {
            if built.summaries.contains_key(&d.digest) {
                continue;
            }
            let summary = match previous.and_then(|p| p.summaries.get(&d.digest)) {
                Some(known) => known.clone(),
                // Blobs that vanished or do not parse are not referrers of anything; they are
                // looked at again in the next version.
                None => match read(&d.digest)? {
                    Some(bytes) => summarise(d, &bytes),
                    None => continue,
                },
            };
            if let Some((subject, referrer)) = &summary {
                built
                    .by_subject
                    .entry(subject.clone())
                    .or_default()
                    .push(Arc::clone(referrer));
            }
            built.summaries.insert(d.digest.clone(), summary);
        }
        Ok(built)
    }

    /// The referrers index of `subject`, optionally only one artifact type, as a stream.
    pub(super) fn page(&self, subject: &Digest, artifact_type: Option<&str>) -> ReferrersPage {
        let entries: Vec<Arc<Referrer>> = self
            .by_subject
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|r| artifact_type.is_none() || r.artifact_type.as_deref() == artifact_type)
            .cloned()
            .collect();
        ReferrersPage::new(entries)
    }
}

/// What a listed manifest with `bytes` is to the referrers API.
fn summarise(listed: &Descriptor, bytes: &[u8]) -> Summary {
    let manifest = Manifest::parse(bytes, Some(&listed.media_type)).ok()?;
    let subject = manifest.subject?.digest;
    let descriptor = Descriptor {
        artifact_type: manifest.artifact_type.clone(),
        annotations: manifest.annotations,
        ..Descriptor::new(
            &manifest.media_type,
            listed.digest.clone(),
            bytes.len() as u64,
        )
    };
    let json = serde_json::to_vec(&descriptor)
        .expect("a descriptor always serializes")
        .into_boxed_slice();
    let referrer = Referrer {
        artifact_type: manifest.artifact_type,
        json,
    };
    Some((subject, Arc::new(referrer)))
}

/// A referrers index (`application/vnd.oci.image.index.v1+json`) made of shared, already
/// serialised descriptors; read as a stream of known length.
pub struct ReferrersPage {
    entries: Vec<Arc<Referrer>>,
    len: u64,
    /// Next part to send: 0 the head, 1..=n an entry (with its separator), n+1 the tail.
    part: usize,
    /// Bytes of that part already sent.
    offset: usize,
}

const HEAD: &[u8] = br#"{"schemaVersion":2,"mediaType":""#;
const HEAD_END: &[u8] = br#"","manifests":["#;
const TAIL: &[u8] = b"]}";

impl ReferrersPage {
    fn new(entries: Vec<Arc<Referrer>>) -> ReferrersPage {
        let separators = entries.len().saturating_sub(1);
        let len = HEAD.len()
            + media_type::OCI_INDEX.len()
            + HEAD_END.len()
            + entries.iter().map(|e| e.json.len()).sum::<usize>()
            + separators
            + TAIL.len();
        ReferrersPage {
            entries,
            len: len as u64,
            part: 0,
            offset: 0,
        }
    }

    /// A page listing no referrer.
    pub(super) fn empty() -> ReferrersPage {
        ReferrersPage::new(Vec::new())
    }

    /// The number of bytes the stream yields.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the page lists no referrer.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bytes of part `part`, with a separator before every entry but the first.
    fn part(&self, part: usize, out: &mut Vec<u8>) -> bool {
        out.clear();
        match part {
            0 => {
                out.extend_from_slice(HEAD);
                out.extend_from_slice(media_type::OCI_INDEX.as_bytes());
                out.extend_from_slice(HEAD_END);
            }
            n if n <= self.entries.len() => {
                if n > 1 {
                    out.push(b',');
                }
                out.extend_from_slice(&self.entries[n - 1].json);
            }
            n if n == self.entries.len() + 1 => out.extend_from_slice(TAIL),
            _ => return false,
        }
        true
    }
}

impl Read for ReferrersPage {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut written = 0;
        let mut scratch = Vec::new();
        while written < buf.len() && self.part(self.part, &mut scratch) {
            let rest = &scratch[self.offset..];
            let n = rest.len().min(buf.len() - written);
            buf[written..written + n].copy_from_slice(&rest[..n]);
            written += n;
            self.offset += n;
            if self.offset == scratch.len() {
                self.part += 1;
                self.offset = 0;
            }
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_page_is_the_index_serde_writes() {
        let subject = Digest::sha256_of(b"subject");
        let referrers: Vec<Arc<Referrer>> = (0..3)
            .map(|i| {
                let mut d = Descriptor::new(
                    media_type::OCI_MANIFEST,
                    Digest::sha256_of(&[i]),
                    10 + i as u64,
                );
                d.artifact_type = Some(format!("application/x-{i}"));
                Arc::new(Referrer {
                    artifact_type: d.artifact_type.clone(),
                    json: serde_json::to_vec(&d).unwrap().into_boxed_slice(),
                })
            })
            .collect();
        let repo = RepoReferrers {
            summaries: HashMap::new(),
            by_subject: HashMap::from([(subject.clone(), referrers)]),
        };
        for filter in [None, Some("application/x-1"), Some("application/x-none")] {
            let mut page = repo.page(&subject, filter);
            let len = page.len();
            // Small reads cross every part boundary.
            let mut streamed = Vec::new();
            let mut buf = [0u8; 7];
            loop {
                let n = page.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                streamed.extend_from_slice(&buf[..n]);
            }
            assert_eq!(streamed.len() as u64, len);
            let parsed: crate::oci::ImageIndex = serde_json::from_slice(&streamed).unwrap();
            let want = match filter {
                None => 3,
                Some("application/x-1") => 1,
                _ => 0,
            };
            assert_eq!(parsed.manifests.len(), want, "{filter:?}");
            assert_eq!(parsed.media_type.as_deref(), Some(media_type::OCI_INDEX));
        }
    }
}
