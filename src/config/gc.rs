//! Garbage collection, retention and scrub settings: zot's `gc`, `gcDelay`, `gcInterval`,
//! `gcTimeWindow` and `retention` keys of a store, and `extensions.scrub`, resolved into typed
//! values with zot's defaults (../shared/reference/zot-internals.md section 3.1):
//!
//! | `gc`    | `gcInterval` | result                        |
//! |---------|--------------|-------------------------------|
//! | false   | ignored      | no collection                 |
//! | omitted | ignored      | every hour (the default store) |
//! | true    | omitted      | every hour                    |
//! | true    | 0            | once, at start-up             |
//! | true    | > 0          | at that interval              |
//!
//! A sub-path store collects only when its own `gc` is true, as in zot.

use super::duration;
use super::raw::{RawKeepTags, RawPolicy, RawRetention, RawScrub, RawStorage};
use serde::Serialize;
use std::time::Duration;

/// zot's `DefaultGCDelay` and `DefaultGCInterval`.
const HOUR: Duration = Duration::from_secs(3600);

/// zot's default scrub interval.
const DAY: Duration = Duration::from_secs(24 * 3600);

/// When and what a store collects.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcConfig {
    /// Whether the store collects at all.
    #[serde(rename = "gc")]
    pub enabled: bool,
    /// Minimum age of an unreferenced blob or an idle upload before it is collected.
    #[serde(rename = "gcDelay", serialize_with = "super::serialize_duration")]
    pub delay: Duration,
    /// Pause between sweeps; `None` sweeps once, at start-up.
    #[serde(rename = "gcInterval", serialize_with = "serialize_interval")]
    pub interval: Option<Duration>,
    /// Sweeps start only inside this daily window (UTC).
    #[serde(rename = "gcTimeWindow", skip_serializing_if = "Option::is_none")]
    pub time_window: Option<TimeWindow>,
    /// What may be removed from `index.json`.
    pub retention: Retention,
}

/// `"HH:MM-HH:MM"` in UTC; the end may be before the start (the window wraps past midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    /// Minutes after midnight UTC at which the window opens.
    pub start: u32,
    /// Minutes after midnight UTC at which the window closes.
    pub end: u32,
}

/// zot's `storage.retention`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Report what would be removed, remove nothing (blobs and uploads included).
    pub dry_run: bool,
    /// Minimum age of an untagged manifest or a referrer before it is removed.
    #[serde(serialize_with = "super::serialize_duration")]
    pub delay: Duration,
    /// The first policy whose `repositories` match a repository applies to it.
    pub policies: Vec<Policy>,
}

/// One retention policy.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Policy {
    /// Repository globs: `*` stays within a path segment, `**` crosses them.
    pub repositories: Vec<String>,
    #[serde(skip)]
    matcher: globset::GlobSet,
    /// Remove manifests whose `subject` is no longer in the repository.
    pub delete_referrers: bool,
    /// Remove untagged manifests that nothing references.
    pub delete_untagged: bool,
    /// When not empty, tags no rule keeps are removed.
    pub keep_tags: Vec<KeepTags>,
}

/// One `keepTags` rule: the tags matching `patterns` (all tags when none) are kept when any
/// of the other fields says so (every matching tag when none is set).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct KeepTags {
    /// Regular expressions matched anywhere in the tag, as zot's Go `regexp.MatchString`.
    pub patterns: Vec<String>,
    #[serde(skip)]
    regexes: Vec<regex::Regex>,
    /// Keep this many most recently pushed tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub most_recently_pushed_count: Option<usize>,
    /// Keep this many most recently pulled tags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub most_recently_pulled_count: Option<usize>,
    /// Keep tags pushed within this long.
    #[serde(
        serialize_with = "serialize_optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub pushed_within: Option<Duration>,
    /// Keep tags pulled within this long.
    #[serde(
        serialize_with = "serialize_optional_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub pulled_within: Option<Duration>,
}

/// `extensions.scrub`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ScrubConfig {
    /// Whether background scrub runs.
    #[serde(rename = "enable")]
    pub enabled: bool,
    /// Pause between scrubs of the whole registry.
    #[serde(serialize_with = "super::serialize_duration")]
    pub interval: Duration,
}

impl Default for ScrubConfig {
    fn default() -> Self {
        ScrubConfig {
            enabled: false,
            interval: DAY,
        }
    }
}

impl Policy {
    /// Whether this policy applies to `repo`.
    pub fn matches(&self, repo: &str) -> bool {
        self.matcher.is_match(repo)
    }

    /// The rules of the default policy, which applies where no policy matches: untagged
    /// manifests go, tags and referrers stay.
    pub fn fallback() -> Policy {
        Policy {
            repositories: Vec::new(),
            matcher: globset::GlobSet::empty(),
            delete_referrers: false,
            delete_untagged: true,
            keep_tags: Vec::new(),
        }
    }
}

impl Retention {
    /// The policy for `repo`.
    pub fn policy_for(&self, repo: &str) -> Option<&Policy> {
        self.policies.iter().find(|p| p.matches(repo))
    }

    /// Whether any rule needs pull times, which are recorded only then.
    pub fn uses_pull_times(&self) -> bool {
        self.policies.iter().any(|p| {
            p.keep_tags
                .iter()
                .any(|k| k.most_recently_pulled_count.is_some() || k.pulled_within.is_some())
        })
    }
}

impl KeepTags {
    /// Whether `tag` is one this rule is about.
    pub fn selects(&self, tag: &str) -> bool {
        self.regexes.is_empty() || self.regexes.iter().any(|r| r.is_match(tag))
    }

    /// Whether the rule has no count or age, so it keeps every tag it selects.
    pub fn keeps_all_selected(&self) -> bool {
        self.most_recently_pushed_count.is_none()
            && self.most_recently_pulled_count.is_none()
            && self.pushed_within.is_none()
            && self.pulled_within.is_none()
    }
}

impl TimeWindow {
    fn parse(text: &str) -> Result<TimeWindow, String> {
        let minute = |hhmm: &str| -> Option<u32> {
            let (h, m) = hhmm.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (start, end) = text
            .split_once('-')
            .and_then(|(s, e)| Some((minute(s)?, minute(e)?)))
            .ok_or_else(|| format!("{text:?} is not \"HH:MM-HH:MM\" (UTC)"))?;
        Ok(TimeWindow { start, end })
    }

    /// Whether `minute` (after midnight UTC) is inside the window.
    pub fn contains(&self, minute: u32) -> bool {
        if self.start <= self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }

    /// How long from `minute` until the window opens (zero when inside it).
    pub fn wait_from(&self, minute: u32) -> Duration {
        if self.contains(minute) {
            return Duration::ZERO;
        }
        let minutes = (self.start + 24 * 60 - minute) % (24 * 60);
        Duration::from_secs(u64::from(minutes) * 60)
    }
}

impl Serialize for TimeWindow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!(
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        ))
    }
}

fn serialize_interval<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&duration::format(*d)),
        // zot's spelling of "once, at start-up".
        None => s.serialize_str("0s"),
    }
}

fn serialize_optional_duration<S: serde::Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&duration::format(*d)),
        None => s.serialize_none(),
    }
}

fn parse_duration(value: &Option<String>, key: &str) -> Result<Option<Duration>, String> {
    value
        .as_deref()
        .map(|v| duration::parse(v).map_err(|e| format!("{key}: {e}")))
        .transpose()
}

/// Resolves the collection settings of one store; `prefix` is its key path and `top` says
/// whether it is the default store (where an omitted `gc` means on). Keys that a disabled
/// collector ignores are reported in `warnings`, as zot warns about them.
pub fn resolve(
    storage: &RawStorage,
    prefix: &str,
    top: bool,
    warnings: &mut Vec<String>,
) -> Result<GcConfig, String> {
    let key = |name: &str| format!("{prefix}.{name}");
    let enabled = storage.gc.unwrap_or(top);
    let delay = parse_duration(&storage.gc_delay, &key("gcDelay"))?.unwrap_or(HOUR);
    let interval = match parse_duration(&storage.gc_interval, &key("gcInterval"))? {
        None => Some(HOUR),
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
    };
    let time_window = storage
        .gc_time_window
        .as_deref()
        .map(|w| TimeWindow::parse(w).map_err(|e| format!("{}: {e}", key("gcTimeWindow"))))
        .transpose()?;
    if enabled && delay.is_zero() {
        return Err(format!(
            "{}: must be greater than 0 while gc is on: a client's blobs would be collected \
             before it pushes the manifest that uses them",
            key("gcDelay")
        ));
    }
    let retention = resolve_retention(storage.retention.as_ref(), &key("retention"), delay)?;
    if !enabled {
        let ignored: Vec<&str> = [
            ("gcDelay", storage.gc_delay.is_some()),
            ("gcInterval", storage.gc_interval.is_some()),
            ("gcTimeWindow", storage.gc_time_window.is_some()),
            ("retention", storage.retention.is_some()),
        ]
        .into_iter()
        .filter_map(|(name, set)| set.then_some(name))
        .collect();
        if !ignored.is_empty() {
            warnings.push(format!(
                "{prefix}: gc is off, so {} {} ignored",
                ignored.join(", "),
                if ignored.len() == 1 { "is" } else { "are" }
            ));
        }
    }
    Ok(GcConfig {
        enabled,
        delay,
        interval,
        time_window,
        retention,
    })
}

fn resolve_retention(
    raw: Option<&RawRetention>,
    prefix: &str,
    gc_delay: Duration,
) -> Result<Retention, String> {
    let Some(raw) = raw else {
        return Ok(Retention {
            dry_run: false,
            delay: gc_delay,
            policies: Vec::new(),
        });
    };
    let policies = raw
        .policies
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, p)| resolve_policy(p, &format!("{prefix}.policies[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Retention {
        dry_run: raw.dry_run.unwrap_or(false),
        delay: parse_duration(&raw.delay, &format!("{prefix}.delay"))?.unwrap_or(gc_delay),
        policies,
    })
}

fn resolve_policy(raw: &RawPolicy, prefix: &str) -> Result<Policy, String> {
    let repositories = raw.repositories.clone().unwrap_or_default();
    if repositories.is_empty() {
        return Err(format!(
            "{prefix}.repositories: name at least one repository glob (\"**\" for all)"
        ));
    }
    let mut builder = globset::GlobSetBuilder::new();
    for glob in &repositories {
        let compiled = globset::GlobBuilder::new(glob)
            .literal_separator(true)
            .build()
            .map_err(|e| format!("{prefix}.repositories: {glob:?}: {e}"))?;
        builder.add(compiled);
    }
    let matcher = builder
        .build()
        .map_err(|e| format!("{prefix}.repositories: {e}"))?;
    let keep_tags = raw
        .keep_tags
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, k)| resolve_keep_tags(k, &format!("{prefix}.keepTags[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Policy {
        repositories,
        matcher,
        delete_referrers: raw.delete_referrers.unwrap_or(false),
        delete_untagged: raw.delete_untagged.unwrap_or(true),
        keep_tags,
    })
}

fn resolve_keep_tags(raw: &RawKeepTags, prefix: &str) -> Result<KeepTags, String> {
    let patterns = raw.patterns.clone().unwrap_or_default();
    let regexes = patterns
        .iter()
        .map(|p| {
            regex::Regex::new(p).map_err(|e| {
                // The regex crate draws a multi-line caret diagram; CLI errors are one line.
                let message = e
                    .to_string()
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                format!("{prefix}.patterns: {p:?}: {message}")
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(KeepTags {
        patterns,
        regexes,
        // zot treats a count of 0 as not set (the rule then keeps what it selects).
        most_recently_pushed_count: raw.most_recently_pushed_count.filter(|&n| n > 0),
        most_recently_pulled_count: raw.most_recently_pulled_count.filter(|&n| n > 0),
        pushed_within: parse_duration(&raw.pushed_within, &format!("{prefix}.pushedWithin"))?,
        pulled_within: parse_duration(&raw.pulled_within, &format!("{prefix}.pulledWithin"))?,
    })
}

/// Resolves `extensions.scrub`: present means enabled unless `enable` says otherwise.
pub fn resolve_scrub(raw: &RawScrub) -> Result<ScrubConfig, String> {
    let interval = parse_duration(&raw.interval, "extensions.scrub.interval")?.unwrap_or(DAY);
    if interval.is_zero() {
        return Err("extensions.scrub.interval: must be greater than 0".into());
    }
    Ok(ScrubConfig {
        enabled: raw.enable.unwrap_or(true),
        interval,
    })
}
