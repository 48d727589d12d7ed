//! One repository's `index.json` in memory: the descriptors it lists, found by tag and by
//! digest without a scan, and the file's bytes as last rendered, so that a change re-renders
//! only the descriptors from the first one it touched. A tag pushed appends one descriptor; a
//! moved or deleted one takes the last descriptor into its place. The layout wants one file
//! listing every manifest, so every change makes a whole new file, but the unchanged part is
//! copied, not serialised again (issue 11: at 100,000 tags, scanning and re-serialising the
//! index was 80% of a manifest PUT), and the rendering says how long that part is, so a driver
//! that recycles the file's storage need not write it again either.

use crate::digest::Digest;
use crate::oci::{Annotations, Descriptor, ImageIndex, Tag, media_type};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};

/// The parsed index of a repository with its lookups and rendering.
#[derive(Clone, Debug)]
pub(super) struct Listing {
    head: Head,
    manifests: Vec<Descriptor>,
    /// Position of the descriptor carrying each tag, keyed by the tag's hash.
    by_tag: HashMap<u64, usize>,
    /// Whether some tag hash is carried by more than one descriptor (a layout written by
    /// another tool may tag two descriptors alike): then `by_tag` names one of them, and
    /// lookups and removals also scan.
    crowded: bool,
    /// Positions of the descriptors of each digest, keyed by the digest's leading bits.
    by_digest: HashMap<u64, Vec<usize>>,
    rendered: Rendered,
}

/// The index's fields other than its descriptors; they never change once parsed.
#[derive(Clone, Debug)]
struct Head {
    schema_version: u32,
    media_type: Option<String>,
    extra: Map<String, Value>,
}

/// `index.json` as last rendered: the head, then descriptor `i` ending at `ends[i]`, then the
/// closing `]}`. Descriptors before `clean` are rendered as they are now: every change lowers
/// it to the first position it touched, so between two renderings it is the least of them,
/// and the bytes up to the end of descriptor `clean - 1` are what the last rendering wrote.
#[derive(Clone, Debug, Default)]
struct Rendered {
    bytes: Vec<u8>,
    head_len: usize,
    ends: Vec<usize>,
    clean: usize,
}

impl Listing {
    /// Parses the bytes of an `index.json`.
    pub(super) fn parse(bytes: &[u8]) -> Result<Listing, serde_json::Error> {
        serde_json::from_slice::<ImageIndex>(bytes).map(Listing::from)
    }

    /// The descriptors, in the order the file lists them.
    pub(super) fn manifests(&self) -> &[Descriptor] {
        &self.manifests
    }

    /// The descriptor carrying `tag`.
    pub(super) fn tagged(&self, tag: &str) -> Option<&Descriptor> {
        self.tag_position(tag).map(|pos| &self.manifests[pos])
    }

    /// Whether some descriptor lists `digest`.
    pub(super) fn lists(&self, digest: &Digest) -> bool {
        !self.digest_positions(digest).is_empty()
    }

    /// The distinct tags, sorted.
    pub(super) fn tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = self
            .manifests
            .iter()
            .filter_map(|d| d.tag().map(str::to_string))
            .collect();
        tags.sort_unstable();
        tags.dedup();
        tags
    }

    /// Points `tag` at `entry`. The manifest the tag left keeps an untagged descriptor if
    /// nothing else lists it; the untagged descriptor of `entry`'s digest, if any, gives way
    /// to the tagged one. Returns whether anything changed.
    pub(super) fn set_tag(&mut self, tag: &Tag, entry: &Descriptor) -> bool {
        if self
            .tagged(tag.as_str())
            .is_some_and(|current| current.digest == entry.digest)
        {
            return false;
        }
        self.untag(tag.as_str());
        let untagged: Vec<usize> = self
            .digest_positions(&entry.digest)
            .into_iter()
            .filter(|&pos| self.manifests[pos].tag().is_none())
            .collect();
        self.remove_positions(untagged);
        let mut tagged = entry.clone();
        tagged.annotations = Some(Annotations::from([(
            media_type::REF_NAME_ANNOTATION,
            tag.as_str(),
        )]));
        self.push(tagged);
        true
    }

    /// Lists `entry` without a tag unless its digest is listed already. Returns whether
    /// anything changed.
    pub(super) fn list_untagged(&mut self, entry: &Descriptor) -> bool {
        if self.lists(&entry.digest) {
            return false;
        }
        self.push(entry.clone());
        true
    }

    /// Removes `tag`; its manifest stays listed, untagged, if nothing else lists it. Returns
    /// whether the tag was there.
    pub(super) fn untag(&mut self, tag: &str) -> bool {
        let Some(pos) = self.tag_position(tag) else {
            return false;
        };
        let mut removed = self.remove_at(pos);
        if !self.lists(&removed.digest) {
            if let Some(annotations) = removed.annotations.as_mut() {
                annotations.remove(media_type::REF_NAME_ANNOTATION);
                if annotations.is_empty() {
                    removed.annotations = None;
                }
            }
            self.push(removed);
        }
        true
    }

    /// Removes every descriptor of `digest`. Returns whether there was one.
    pub(super) fn unlist(&mut self, digest: &Digest) -> bool {
        let positions = self.digest_positions(digest);
        let found = !positions.is_empty();
        self.remove_positions(positions);
        found
    }

    /// Keeps only the descriptors `keep` accepts. Returns whether any went.
    pub(super) fn retain(&mut self, keep: impl FnMut(&Descriptor) -> bool) -> bool {
        let before = self.manifests.len();
        self.manifests.retain(keep);
        if self.manifests.len() == before {
            return false;
        }
        self.reindex();
        self.rendered.clean = 0;
        true
    }

    /// The bytes of `index.json` as the descriptors stand now, rendering only what changed
    /// since the last call, and how many of their leading bytes are the same as the last
    /// call's (0 for the first): what `Driver::replace` takes as its unchanged prefix, so a
    /// tag pushed into a large repository rewrites only the file's tail, not 21 MB at
    /// 100,000 tags.
    pub(super) fn render(&mut self) -> (&[u8], usize) {
        let r = &mut self.rendered;
        let first = r.head_len == 0;
        if first {
            r.bytes = self.head.render();
            r.head_len = r.bytes.len();
            r.ends.clear();
            r.clean = 0;
        }
        let clean = r.clean.min(self.manifests.len());
        let keep = clean.checked_sub(1).map_or(r.head_len, |last| r.ends[last]);
        r.bytes.truncate(keep);
        r.ends.truncate(clean);
        for (i, d) in self.manifests.iter().enumerate().skip(clean) {
            if i > 0 {
                r.bytes.push(b',');
            }
            serde_json::to_writer(&mut r.bytes, d).expect("a descriptor always serializes");
            r.ends.push(r.bytes.len());
        }
        r.clean = self.manifests.len();
        r.bytes.extend_from_slice(b"]}");
        (&r.bytes, if first { 0 } else { keep })
    }

    /// Roughly the bytes the listing holds: its rendering, and per descriptor what a tagged
    /// one was measured to take parsed and looked up (~700 bytes), over a fixed cost for the
    /// maps and the head that even a repository of one image pays.
    pub(super) fn weight(&self) -> usize {
        const FIXED: usize = 1024;
        const PER_DESCRIPTOR: usize = 700;
        FIXED + self.manifests.len() * PER_DESCRIPTOR + self.rendered.bytes.capacity()
    }

    fn tag_position(&self, tag: &str) -> Option<usize> {
        let carries = |pos: &usize| self.manifests[*pos].tag() == Some(tag);
        match self.by_tag.get(&tag_key(tag)).filter(|pos| carries(pos)) {
            Some(pos) => Some(*pos),
            None if self.crowded => (0..self.manifests.len()).find(carries),
            None => None,
        }
    }

    fn digest_positions(&self, digest: &Digest) -> Vec<usize> {
        self.by_digest
            .get(&digest_key(digest))
            .map(|positions| {
                positions
                    .iter()
                    .copied()
                    .filter(|&pos| &self.manifests[pos].digest == digest)
                    .collect()
            })
            .unwrap_or_default()
    }

    fn push(&mut self, d: Descriptor) {
        let pos = self.manifests.len();
        self.manifests.push(d);
        self.index_at(pos);
    }

    /// Removes the descriptors at `positions`, highest first, so that the last descriptor
    /// each removal moves into the hole is never one still to be removed.
    fn remove_positions(&mut self, mut positions: Vec<usize>) {
        positions.sort_unstable_by(|a, b| b.cmp(a));
        for pos in positions {
            self.remove_at(pos);
        }
    }

    /// Removes the descriptor at `pos`; the last descriptor takes its place.
    fn remove_at(&mut self, pos: usize) -> Descriptor {
        let last = self.manifests.len() - 1;
        self.unindex_at(pos);
        if pos != last {
            self.unindex_at(last);
        }
        let removed = self.manifests.swap_remove(pos);
        if pos != last {
            self.index_at(pos);
        }
        if let Some(tag) = removed.tag()
            && self.crowded
            && !self.by_tag.contains_key(&tag_key(tag))
        {
            // Another descriptor may carry the same tag hash: let the map name it.
            if let Some(other) = (0..self.manifests.len())
                .find(|&p| self.manifests[p].tag().map(tag_key) == Some(tag_key(tag)))
            {
                self.by_tag.insert(tag_key(tag), other);
            }
        }
        self.rendered.clean = self.rendered.clean.min(pos);
        removed
    }

    fn index_at(&mut self, pos: usize) {
        let d = &self.manifests[pos];
        if let Some(tag) = d.tag() {
            match self.by_tag.entry(tag_key(tag)) {
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(pos);
                }
                std::collections::hash_map::Entry::Occupied(_) => self.crowded = true,
            }
        }
        self.by_digest
            .entry(digest_key(&d.digest))
            .or_default()
            .push(pos);
    }

    fn unindex_at(&mut self, pos: usize) {
        let d = &self.manifests[pos];
        if let Some(tag) = d.tag()
            && self.by_tag.get(&tag_key(tag)) == Some(&pos)
        {
            self.by_tag.remove(&tag_key(tag));
        }
        let key = digest_key(&d.digest);
        if let Some(positions) = self.by_digest.get_mut(&key) {
            positions.retain(|&p| p != pos);
            if positions.is_empty() {
                self.by_digest.remove(&key);
            }
        }
    }

    fn reindex(&mut self) {
        self.by_tag.clear();
        self.by_digest.clear();
        self.crowded = false;
        for pos in 0..self.manifests.len() {
            self.index_at(pos);
        }
    }
}

impl From<ImageIndex> for Listing {
    fn from(index: ImageIndex) -> Listing {
        let mut listing = Listing {
            head: Head {
                schema_version: index.schema_version,
                media_type: index.media_type,
                extra: index.extra,
            },
            manifests: index.manifests,
            by_tag: HashMap::new(),
            crowded: false,
            by_digest: HashMap::new(),
            rendered: Rendered::default(),
        };
        listing.reindex();
        listing
    }
}

impl Head {
    /// `{` and every field but `manifests`, then `"manifests":[`: the fixed start of the
    /// file, so that descriptors and the closing `]}` follow it.
    fn render(&self) -> Vec<u8> {
        let mut fields = self.extra.clone();
        fields.insert("schemaVersion".into(), self.schema_version.into());
        if let Some(media_type) = &self.media_type {
            fields.insert("mediaType".into(), media_type.clone().into());
        }
        let mut bytes = serde_json::to_vec(&fields).expect("a map always serializes");
        bytes.pop(); // the map's closing brace
        bytes.extend_from_slice(b",\"manifests\":[");
        bytes
    }
}

fn tag_key(tag: &str) -> u64 {
    let mut h = DefaultHasher::new();
    tag.hash(&mut h);
    h.finish()
}

/// A digest's hex is already uniformly distributed: its first 16 digits are the key.
fn digest_key(digest: &Digest) -> u64 {
    let hex = digest.hex();
    u64::from_str_radix(&hex[..hex.len().min(16)], 16).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MT: &str = media_type::OCI_MANIFEST;

    fn digest(n: u8) -> Digest {
        Digest::sha256_of(&[n])
    }

    fn entry(n: u8) -> Descriptor {
        Descriptor::new(MT, digest(n), u64::from(n))
    }

    fn tag(t: &str) -> Tag {
        t.parse().unwrap()
    }

    /// What the rendered bytes say, parsed by serde as any reader would.
    fn on_disk(listing: &mut Listing) -> ImageIndex {
        serde_json::from_slice(listing.render().0).unwrap()
    }

    /// The listing's lookups agree with a scan of its descriptors, and its rendering with a
    /// fresh serialisation of them.
    fn assert_consistent(listing: &mut Listing) {
        for d in listing.manifests().to_vec() {
            assert!(listing.lists(&d.digest));
            if let Some(t) = d.tag() {
                assert_eq!(listing.tagged(t).map(|x| &x.digest), Some(&d.digest));
            }
        }
        let manifests = listing.manifests().to_vec();
        assert_eq!(on_disk(listing).manifests, manifests);
    }

    #[test]
    fn tags_move_and_untagged_descriptors_stay_exactly_once() {
        let mut l = Listing::from(ImageIndex::empty());
        assert!(l.set_tag(&tag("a"), &entry(1)));
        assert!(l.set_tag(&tag("b"), &entry(1)));
        assert!(!l.set_tag(&tag("a"), &entry(1)), "same digest: no change");
        assert!(l.list_untagged(&entry(2)));
        assert!(!l.list_untagged(&entry(1)), "listed already");
        assert!(
            l.set_tag(&tag("c"), &entry(2)),
            "tagging replaces the untagged descriptor"
        );
        assert_eq!(l.manifests().len(), 3);
        assert!(l.set_tag(&tag("c"), &entry(3)));
        assert_eq!(
            l.manifests()
                .iter()
                .filter(|d| d.digest == digest(2))
                .count(),
            1,
            "the manifest the tag left stays listed, untagged"
        );
        assert!(l.tagged("c").is_some_and(|d| d.digest == digest(3)));
        assert!(l.untag("a"));
        assert!(!l.untag("a"));
        assert!(l.tagged("b").is_some(), "b still lists digest 1");
        assert!(l.unlist(&digest(1)));
        assert!(!l.lists(&digest(1)) && l.tagged("b").is_none());
        assert_eq!(l.tags(), vec!["c".to_string()]);
        assert_consistent(&mut l);
    }

    #[test]
    fn rendering_after_every_change_matches_a_full_serialisation() {
        let mut l = Listing::parse(
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","annotations":{"k":"v"},"manifests":[]}"#,
        )
        .unwrap();
        for n in 0..40u8 {
            l.set_tag(&tag(&format!("t{}", n % 17)), &entry(n));
            if n % 5 == 0 {
                l.unlist(&digest(n / 2));
            }
            if n % 7 == 0 {
                l.untag(&format!("t{}", n % 3));
            }
            if n % 11 == 0 {
                l.retain(|d| d.size % 13 != 0);
            }
            assert_consistent(&mut l);
        }
        let index = on_disk(&mut l);
        assert_eq!(
            index.extra["annotations"]["k"], "v",
            "other fields are kept"
        );
        assert_eq!(index.schema_version, 2);
    }

    /// Renders `l`, checks that the unchanged prefix it reports is the same in `previous`,
    /// and makes the rendering the new `previous`. Returns the prefix's length.
    fn rerender(l: &mut Listing, previous: &mut Vec<u8>, what: &str) -> usize {
        let (bytes, unchanged) = l.render();
        assert!(unchanged <= previous.len().min(bytes.len()), "{what}");
        assert_eq!(bytes[..unchanged], previous[..unchanged], "{what}");
        *previous = bytes.to_vec();
        unchanged
    }

    /// The unchanged prefix a rendering reports is the same as the previous rendering, after
    /// every kind of change and after several changes between two renderings; a pushed tag
    /// leaves all but the closing `]}` unchanged.
    #[test]
    fn the_unchanged_prefix_is_the_previous_rendering() {
        let mut l = Listing::from(ImageIndex::empty());
        let (first, unchanged) = l.render();
        assert_eq!(unchanged, 0, "the first rendering has nothing to share");
        let mut previous = first.to_vec();
        let prev = &mut previous;
        for n in 0..30u8 {
            let before = prev.len();
            l.set_tag(&tag(&format!("t{n}")), &entry(n));
            assert_eq!(rerender(&mut l, prev, "push a tag"), before - 2);
        }
        l.set_tag(&tag("t3"), &entry(40));
        rerender(&mut l, prev, "move a tag");
        l.untag("t5");
        rerender(&mut l, prev, "untag, the last descriptor taking its place");
        l.list_untagged(&entry(41));
        l.unlist(&digest(7));
        l.set_tag(&tag("t20"), &entry(42));
        rerender(&mut l, prev, "three changes between renderings");
        l.retain(|d| d.size % 3 != 0);
        rerender(&mut l, prev, "retain");
        l.unlist(&digest(29));
        rerender(&mut l, prev, "unlist the last descriptor");
        assert!(!l.untag("t5"));
        let before = prev.len();
        assert_eq!(rerender(&mut l, prev, "no change"), before - 2);
        let mut parsed = Listing::parse(prev).unwrap();
        assert_eq!(parsed.render().1, 0, "a parsed listing was never rendered");
    }

    #[test]
    fn a_tag_carried_twice_in_a_foreign_layout_is_found_after_either_goes() {
        let tagged = |n: u8| {
            let mut d = entry(n);
            d.annotations = Some(Annotations::from([(
                media_type::REF_NAME_ANNOTATION,
                "dup",
            )]));
            serde_json::to_value(d).unwrap()
        };
        let index = serde_json::json!({ "schemaVersion": 2, "manifests": [tagged(1), tagged(2)] });
        let mut l = Listing::parse(&serde_json::to_vec(&index).unwrap()).unwrap();
        assert!(l.unlist(&digest(1)));
        assert!(l.tagged("dup").is_some_and(|d| d.digest == digest(2)));
        assert!(l.untag("dup"));
        assert!(l.tagged("dup").is_none());
        assert_consistent(&mut l);
    }
}
