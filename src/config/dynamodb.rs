//! `storage.cacheDriver` with `"name": "dynamodb"`, as zot reads it: `endpoint`, `region`
//! and the cache's table, `tableName` (zot's README) or `cacheTablename` (zot's docs and
//! code). zot's other tables (metadata, users, API keys) are accepted with a warning: berth
//! keeps none of that in DynamoDB. berth-only: `timeout`, and `accesskey`/`secretkey`, the
//! first source of the credential chain the S3 driver uses (`s3::credentials_from`).

use serde_json::Value;
use std::time::Duration;

/// zot's table names for what berth does not keep in DynamoDB.
const OTHER_TABLES: [&str; 6] = [
    "repoMetaTablename",
    "imageMetaTablename",
    "repoBlobsInfoTablename",
    "userDataTablename",
    "apiKeyTablename",
    "versionTablename",
];

/// A DynamoDB cache's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamoDbSettings {
    /// The endpoint URL; `None`: AWS's for the region.
    pub endpoint: Option<String>,
    /// The region.
    pub region: String,
    /// The table of the dedupe index, usage times, markers and leases of every store.
    pub table: String,
    /// How long one call may take, retries included, before the cache counts as unavailable.
    pub timeout: Duration,
    /// Keys given in the config, if any.
    pub accesskey: Option<String>,
    /// Never printed.
    pub secretkey: Option<String>,
}

impl DynamoDbSettings {
    /// The default `timeout`: DynamoDB answers in milliseconds; a push waits at most this
    /// long for a cache that does not.
    pub const DEFAULT_TIME_OUT: Duration = Duration::from_secs(3);
}

/// Resolves the object at `key` (`storage.cacheDriver`), whose `name` is `dynamodb`.
pub(super) fn resolve(
    object: &serde_json::Map<String, Value>,
    key: &str,
    warnings: &mut Vec<String>,
) -> Result<DynamoDbSettings, String> {
    let at = |name: &str| format!("{key}.{name}");
    let mut settings = DynamoDbSettings {
        endpoint: None,
        region: String::new(),
        table: String::new(),
        timeout: DynamoDbSettings::DEFAULT_TIME_OUT,
        accesskey: None,
        secretkey: None,
    };
    let (mut table_name, mut cache_tablename) = (None, None);
    for (name, value) in object {
        let text = || match value {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            other => Err(format!("{}: {other}: a non-empty string", at(name))),
        };
        // zot reads its config case-insensitively.
        match name.to_ascii_lowercase().as_str() {
            "name" => {}
            "endpoint" => settings.endpoint = Some(text()?),
            "region" => settings.region = text()?,
            "tablename" => table_name = Some(text()?),
            "cachetablename" => cache_tablename = Some(text()?),
            "accesskey" => settings.accesskey = Some(text()?),
            "secretkey" => settings.secretkey = Some(text()?),
            "timeout" => {
                settings.timeout =
                    super::duration::parse(&text()?).map_err(|e| format!("{}: {e}", at(name)))?;
                if settings.timeout.is_zero() {
                    return Err(format!("{}: must be more than 0", at(name)));
                }
            }
            lower => match OTHER_TABLES
                .iter()
                .find(|t| t.to_ascii_lowercase() == lower)
            {
                Some(_) => {
                    text()?;
                    warnings.push(format!(
                        "{}: ignored, berth keeps no metadata, users or API keys in DynamoDB",
                        at(name)
                    ));
                }
                None => return Err(format!("{}: unknown key", at(name))),
            },
        }
    }
    settings.table = match (table_name, cache_tablename) {
        (Some(a), Some(b)) if a != b => {
            return Err(format!(
                "{} and {}: two different tables ({a:?}, {b:?}); give one",
                at("tableName"),
                at("cacheTablename")
            ));
        }
        (Some(table), _) | (None, Some(table)) => table,
        (None, None) => return Err(format!("{}: required", at("cacheTablename"))),
    };
    if settings.region.is_empty() {
        return Err(format!("{}: required", at("region")));
    }
    if settings.accesskey.is_some() != settings.secretkey.is_some() {
        return Err(format!(
            "{}: give both accesskey and secretkey, or neither",
            key
        ));
    }
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resolved(value: Value) -> Result<(DynamoDbSettings, Vec<String>), String> {
        let mut warnings = Vec::new();
        let object = value.as_object().expect("a test's driver is an object");
        resolve(object, "storage.cacheDriver", &mut warnings).map(|s| (s, warnings))
    }

    #[test]
    fn both_table_spellings_name_the_table() {
        for spelling in ["tableName", "cacheTablename", "cachetablename"] {
            let (s, warnings) = resolved(json!({
                "name": "dynamodb", "endpoint": "http://localhost:4566",
                "region": "us-east-2", spelling: "ZotBlobTable"
            }))
            .unwrap();
            assert_eq!(s.table, "ZotBlobTable", "{spelling}");
            assert_eq!(s.endpoint.as_deref(), Some("http://localhost:4566"));
            assert_eq!(s.region, "us-east-2");
            assert_eq!(s.timeout, DynamoDbSettings::DEFAULT_TIME_OUT);
            assert!(warnings.is_empty());
        }
        let same =
            json!({"name": "dynamodb", "region": "r", "tableName": "T", "cacheTablename": "T"});
        assert_eq!(resolved(same).unwrap().0.table, "T");
        let differ =
            json!({"name": "dynamodb", "region": "r", "tableName": "T", "cacheTablename": "U"});
        let e = resolved(differ).unwrap_err();
        assert!(
            e.starts_with("storage.cacheDriver.tableName and storage.cacheDriver.cacheTablename:"),
            "{e}"
        );
        let none = json!({"name": "dynamodb", "region": "r"});
        assert_eq!(
            resolved(none).unwrap_err(),
            "storage.cacheDriver.cacheTablename: required"
        );
    }

    #[test]
    fn zots_other_tables_are_accepted_with_a_warning() {
        let mut value = json!({"name": "dynamodb", "region": "r", "cacheTablename": "T"});
        for table in OTHER_TABLES {
            value[table] = json!(format!("Zot{table}"));
        }
        let (s, warnings) = resolved(value).unwrap();
        assert_eq!(s.table, "T");
        assert_eq!(warnings.len(), OTHER_TABLES.len());
        for table in OTHER_TABLES {
            let key = format!("storage.cacheDriver.{table}: ignored");
            assert!(warnings.iter().any(|w| w.starts_with(&key)), "{key}");
        }
    }

    #[test]
    fn bad_values_name_their_key() {
        let base = json!({"name": "dynamodb", "region": "r", "tableName": "T"});
        for (name, bad, message) in [
            (
                "region",
                json!(3),
                "storage.cacheDriver.region: 3: a non-empty string",
            ),
            (
                "endpoint",
                json!(""),
                "storage.cacheDriver.endpoint: \"\": a non-empty string",
            ),
            ("timeout", json!("soon"), "storage.cacheDriver.timeout: "),
            (
                "timeout",
                json!("0s"),
                "storage.cacheDriver.timeout: must be more than 0",
            ),
            (
                "tablename",
                json!(true),
                "storage.cacheDriver.tablename: true: a non-empty string",
            ),
            (
                "tableNames",
                json!("T"),
                "storage.cacheDriver.tableNames: unknown key",
            ),
            (
                "accesskey",
                json!("a"),
                "storage.cacheDriver: give both accesskey and secretkey",
            ),
        ] {
            let mut value = base.clone();
            value[name] = bad;
            let e = resolved(value).unwrap_err();
            assert!(e.starts_with(message), "{name}: {e}");
        }
        let missing = json!({"name": "dynamodb", "tableName": "T"});
        assert_eq!(
            resolved(missing).unwrap_err(),
            "storage.cacheDriver.region: required"
        );
    }
}
