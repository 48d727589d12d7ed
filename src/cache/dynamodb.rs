//! The DynamoDB cache (issue 14): one table shared by every instance serving a store, and by
//! several stores, each in its own `Namespace`. `DynamoDb` is the table and its client;
//! `DynamoDbCache` the records of one namespace, implementing the four cache traits.
//!
//! The table has a string partition key `pk` and a string sort key `sk`. Every `pk` starts
//! with the first 32 hex digits of the SHA-256 of the namespace's name (`Namespace::hashed`),
//! so namespaces never meet and keys stay short for any name. Items:
//! - `<ns>#blob#<digest>` / `original`: `path`, the digest's original; and
//!   `<ns>#blob#<digest>` / `copy#<hash of path>`: `path`, one item per recorded path (the
//!   original's too), so a digest in 50,000 repositories is 50,000 small items rather than
//!   one value rewritten on each add (issue 11; an item holds at most 400 KB anyway);
//! - `<ns>#markers` / `<name>`: `value`;
//! - `<ns>#pushed#<repository>` / `<tag>` and `<ns>#pulled#<repository>` / `<digest>`:
//!   `at`, milliseconds since the Unix epoch;
//! - `<ns>#leases` / `<name>`: `holder` and `until` (milliseconds since the Unix epoch).
//!
//! What must be atomic across processes is one conditional write: the original is set with
//! `if_not_exists` (of instances adding one new digest, one is told it was unknown), a
//! promotion only replaces the original it read (`path = :removed`), `put_original` sets the
//! original and records its path in one transaction, a usage time only replaces an earlier
//! one, and a lease is taken only when free, held by the taker, or expired, the expiry
//! compared in the condition with the taker's clock (instances need clocks within a small
//! part of a lease's time-to-live of each other, which NTP gives).
//!
//! The SDK is async; a small tokio runtime owned by the table drives it, and the blocking
//! request workers wait with `Runtime::block_on`, which any number of threads may call at
//! once (each polls its own call; the runtime's one worker drives the sockets and timers).
//! Every call has a time-out covering its retries; what cannot be reached in time, or is
//! throttled, is `CacheError::Unavailable` and the store goes on without the cache. A table
//! that is missing (never made, or deleted) is created, on demand, when DynamoDB answers:
//! unreachable at start, berth starts anyway and creates it at the first call that gets
//! through.

use super::{CacheError, DedupeIndex, LeaseKey, Leases, MarkerKey, Markers, Namespace, UsageLog};
use crate::digest::Digest;
use crate::oci::{RepoName, Tag};
use crate::storage::driver::StoragePath;
use crate::storage::driver::s3::Provider;
use aws_credential_types::provider::{ProvideCredentials, error::CredentialsError, future};
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{Region, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, Put, PutRequest,
    ReturnValue, ScalarAttributeType, TableStatus, TransactWriteItem, Update, WriteRequest,
};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const NAME: &str = "dynamodb";

/// Attempts per call (the first and two retries), all within the call's time-out.
const ATTEMPTS: u32 = 3;

/// Requests in flight at once for a batch DynamoDB has no batch call for (conditional
/// writes: the usage times, the originals of `put_many`).
const IN_FLIGHT: usize = 16;

/// Items per BatchWriteItem, DynamoDB's limit.
const BATCH_WRITE: usize = 25;

/// How often a table being created is asked whether it is ACTIVE.
const POLL: Duration = Duration::from_millis(200);

/// How long a new table may take to become ACTIVE (DynamoDB takes seconds).
const CREATE_WAIT: Duration = Duration::from_secs(60);

/// Where the table is and how calls reach it.
#[derive(Clone)]
pub struct DynamoDbOptions {
    /// The endpoint URL; `None`: AWS's for the region.
    pub endpoint: Option<String>,
    /// The region requests are signed for.
    pub region: String,
    /// The table's name.
    pub table: String,
    /// How long one call may take, retries included.
    pub timeout: Duration,
}

/// One table and its client, shared by the namespaces opened in it.
pub struct DynamoDb {
    shared: Arc<Shared>,
}

struct Shared {
    runtime: tokio::runtime::Runtime,
    client: Client,
    table: String,
    /// Whether the table is known to exist and be ACTIVE.
    ready: AtomicBool,
    /// One creation at a time.
    creating: tokio::sync::Mutex<()>,
    round_trips: AtomicU64,
}

/// The records of one namespace in a `DynamoDb` table.
pub struct DynamoDbCache {
    shared: Arc<Shared>,
    prefix: String,
}

/// berth's credential chain (`config::s3::credentials_from`) as the SDK's provider: instance
/// credentials are refreshed by berth's `Provider`, off the runtime's worker.
struct Keys(Arc<Provider>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("berth's AWS credentials")
    }
}

impl ProvideCredentials for Keys {
    fn provide_credentials<'a>(&'a self) -> future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        let provider = Arc::clone(&self.0);
        future::ProvideCredentials::new(async move {
            let found = tokio::task::spawn_blocking(move || provider.get())
                .await
                .map_err(CredentialsError::unhandled)?
                .map_err(CredentialsError::provider_error)?;
            Ok(aws_credential_types::Credentials::new(
                found.access_key.clone(),
                found.secret_key.clone(),
                found.session_token.clone(),
                found.refresh.as_ref().map(|r| r.expires),
                "berth",
            ))
        })
    }
}

fn unavailable(op: &'static str, message: String) -> CacheError {
    CacheError::Unavailable {
        cache: NAME,
        op,
        message,
    }
}

fn failed(op: &'static str, message: impl ToString) -> CacheError {
    CacheError::Failed {
        cache: NAME,
        op,
        message: message.to_string(),
    }
}

/// DynamoDB's answers that say "not now": throttling, its own trouble, and a missing table
/// (created again by the next call).
const NOT_NOW: [&str; 7] = [
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "InternalServerError",
    "ServiceUnavailable",
    "LimitExceededException",
    "ResourceNotFoundException",
];

impl Shared {
    /// Maps an SDK error: no connection, no answer in time, a broken answer or a "not now"
    /// answer are `Unavailable`; anything else (a refused request, bad keys) `Failed`.
    fn error<E, R>(&self, op: &'static str, e: SdkError<E, R>) -> CacheError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let code = e
            .as_service_error()
            .and_then(|s| s.code().map(str::to_string));
        if code.as_deref() == Some("ResourceNotFoundException") {
            self.ready.store(false, Ordering::SeqCst);
        }
        let not_now = match &e {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => true,
            SdkError::ResponseError(_) => true,
            SdkError::ServiceError(_) => code.as_deref().is_some_and(|c| NOT_NOW.contains(&c)),
            _ => false,
        };
        let message = DisplayErrorContext(&e).to_string();
        if not_now {
            unavailable(op, message)
        } else {
            failed(op, message)
        }
    }

    /// The answer of a conditional write: whether it was written; its condition failing is
    /// no error.
    fn written<T, E, R>(
        &self,
        op: &'static str,
        result: Result<T, SdkError<E, R>>,
    ) -> Result<bool, CacheError>
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error().and_then(|s| s.code())
                    == Some("ConditionalCheckFailedException") =>
            {
                Ok(false)
            }
            Err(e) => Err(self.error(op, e)),
        }
    }

    /// Writes `item`, replacing any with its key.
    async fn put(&self, op: &'static str, item: Item) -> Result<(), CacheError> {
        self.trip();
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map(drop)
            .map_err(|e| self.error(op, e))
    }

    /// Counts one request.
    fn trip(&self) {
        self.round_trips.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs `call` on the runtime, first making sure the table is there.
    fn run<T>(&self, call: impl Future<Output = Result<T, CacheError>>) -> Result<T, CacheError> {
        self.runtime.block_on(async {
            self.ensure_table().await?;
            call.await
        })
    }

    /// Creates the table when missing and waits until it is ACTIVE; a no-op once it is.
    async fn ensure_table(&self) -> Result<(), CacheError> {
        if self.ready.load(Ordering::SeqCst) {
            return Ok(());
        }
        let _one = self.creating.lock().await;
        if self.ready.load(Ordering::SeqCst) {
            return Ok(());
        }
        let started = Instant::now();
        let mut created = false;
        loop {
            self.trip();
            let described = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await;
            let status = match described {
                Ok(out) => out.table().and_then(|t| t.table_status().cloned()),
                Err(e)
                    if !created
                        && e.as_service_error()
                            .is_some_and(|s| s.is_resource_not_found_exception()) =>
                {
                    self.create_table().await?;
                    created = true;
                    continue;
                }
                Err(e) => return Err(self.error("describe table", e)),
            };
            match status {
                Some(TableStatus::Active) => break,
                Some(TableStatus::Creating | TableStatus::Updating) | None => {}
                Some(other) => {
                    return Err(unavailable(
                        "describe table",
                        format!("table {} is {other:?}", self.table),
                    ));
                }
            }
            if started.elapsed() > CREATE_WAIT {
                return Err(unavailable(
                    "create table",
                    format!("table {} not ACTIVE after {CREATE_WAIT:?}", self.table),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
        if created {
            tracing::info!(table = %self.table, "dynamodb: created the cache table");
        }
        self.ready.store(true, Ordering::SeqCst);
        Ok(())
    }

    async fn create_table(&self) -> Result<(), CacheError> {
        let attribute = |name: &str| {
            AttributeDefinition::builder()
                .attribute_name(name)
                .attribute_type(ScalarAttributeType::S)
                .build()
                .map_err(|e| failed("create table", e))
        };
        let key = |name: &str, kind| {
            KeySchemaElement::builder()
                .attribute_name(name)
                .key_type(kind)
                .build()
                .map_err(|e| failed("create table", e))
        };
        self.trip();
        let created = self
            .client
            .create_table()
            .table_name(&self.table)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(attribute("pk")?)
            .attribute_definitions(attribute("sk")?)
            .key_schema(key("pk", KeyType::Hash)?)
            .key_schema(key("sk", KeyType::Range)?)
            .send()
            .await;
        match created {
            Ok(_) => Ok(()),
            // Another instance created it first.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_resource_in_use_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(self.error("create table", e)),
        }
    }
}

impl DynamoDb {
    /// The table `options` names, reached with `credentials` (berth's chain). Creates the
    /// table when DynamoDB answers and it is missing; when DynamoDB does not answer, logs it
    /// and returns the table anyway (calls fail `Unavailable` until it answers).
    pub fn open(options: DynamoDbOptions, credentials: Provider) -> Result<DynamoDb, CacheError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("berth-dynamodb")
            .enable_all()
            .build()
            .map_err(|e| failed("start runtime", e))?;
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let attempt = options.timeout / ATTEMPTS;
        let mut config = aws_sdk_dynamodb::Config::builder()
            .behavior_version_latest()
            .region(Region::new(options.region.clone()))
            .credentials_provider(Keys(Arc::new(credentials)))
            .http_client(http)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(ATTEMPTS)
                    .with_initial_backoff(attempt / 10)
                    .with_max_backoff(attempt),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(attempt)
                    .operation_attempt_timeout(attempt)
                    .operation_timeout(options.timeout)
                    .build(),
            );
        if let Some(endpoint) = &options.endpoint {
            config = config.endpoint_url(endpoint);
        }
        // The SDK's sleep and time-outs need the runtime's context while it is built.
        let client = {
            let _inside = runtime.enter();
            Client::from_conf(config.build())
        };
        let table = DynamoDb {
            shared: Arc::new(Shared {
                runtime,
                client,
                table: options.table.clone(),
                ready: AtomicBool::new(false),
                creating: tokio::sync::Mutex::new(()),
                round_trips: AtomicU64::new(0),
            }),
        };
        if let Err(e) = table.shared.run(async { Ok(()) }) {
            match e {
                CacheError::Unavailable { .. } => tracing::warn!(
                    table = %options.table,
                    "dynamodb: not reachable at start, going on without it until it answers: {e}"
                ),
                failed => return Err(failed),
            }
        }
        Ok(table)
    }

    /// The records of `namespace`.
    pub fn namespace(&self, namespace: &Namespace) -> DynamoDbCache {
        DynamoDbCache {
            shared: Arc::clone(&self.shared),
            prefix: namespace.hashed(),
        }
    }

    /// Requests sent to DynamoDB so far, through every namespace (each may have been
    /// retried within its time-out).
    pub fn round_trips(&self) -> u64 {
        self.shared.round_trips.load(Ordering::Relaxed)
    }
}

type Item = HashMap<String, AttributeValue>;

fn s(value: &str) -> AttributeValue {
    AttributeValue::S(value.to_string())
}

fn n(value: u64) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn millis(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn text<'a>(item: &'a Item, name: &str, op: &'static str) -> Result<&'a str, CacheError> {
    match item.get(name) {
        Some(AttributeValue::S(value)) => Ok(value),
        other => Err(failed(op, format!("attribute {name}: {other:?}"))),
    }
}

fn number(item: &Item, name: &str, op: &'static str) -> Result<u64, CacheError> {
    match item.get(name) {
        Some(AttributeValue::N(value)) => value
            .parse()
            .map_err(|_| failed(op, format!("attribute {name}: {value}"))),
        other => Err(failed(op, format!("attribute {name}: {other:?}"))),
    }
}

fn parse_path(value: &str, op: &'static str) -> Result<StoragePath, CacheError> {
    StoragePath::from_components(value.split('/'))
        .map_err(|e| failed(op, format!("recorded path {value:?}: {e}")))
}

fn key(pk: String, sk: &str) -> Item {
    HashMap::from([
        ("pk".to_string(), AttributeValue::S(pk)),
        ("sk".to_string(), s(sk)),
    ])
}

/// Sort key of the head item of a digest, which names the original.
const ORIGINAL: &str = "original";

/// Sort keys of the items recording paths start with this.
const COPY: &str = "copy#";

fn copy_sk(path: &StoragePath) -> String {
    let hash = Digest::sha256_of(path.as_str().as_bytes());
    format!("{COPY}{}", &hash.hex()[..32])
}

impl DynamoDbCache {
    fn blob_pk(&self, digest: &Digest) -> String {
        format!("{}#blob#{digest}", self.prefix)
    }

    fn copy_item(&self, digest: &Digest, path: &StoragePath) -> Item {
        let mut item = key(self.blob_pk(digest), &copy_sk(path));
        item.insert("path".into(), s(path.as_str()));
        item
    }

    /// Sets the original of `digest` to `path` unless it has one; answers the one before.
    async fn set_original_if_none(
        &self,
        digest: &Digest,
        path: &StoragePath,
    ) -> Result<Option<StoragePath>, CacheError> {
        let shared = &self.shared;
        shared.trip();
        let out = shared
            .client
            .update_item()
            .table_name(&shared.table)
            .set_key(Some(key(self.blob_pk(digest), ORIGINAL)))
            .update_expression("SET #p = if_not_exists(#p, :p)")
            .expression_attribute_names("#p", "path")
            .expression_attribute_values(":p", s(path.as_str()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| shared.error("record original", e))?;
        out.attributes()
            .map(|old| parse_path(text(old, "path", "record original")?, "record original"))
            .transpose()
    }

    /// Writes `items` with BatchWriteItem, 25 at a time, sending again what DynamoDB left
    /// unprocessed (it does under load) a few times before giving up as unavailable.
    async fn batch_put(&self, op: &'static str, items: Vec<Item>) -> Result<(), CacheError> {
        let shared = &self.shared;
        for chunk in items.chunks(BATCH_WRITE) {
            let mut requests = chunk
                .iter()
                .map(|item| {
                    let put = PutRequest::builder()
                        .set_item(Some(item.clone()))
                        .build()
                        .map_err(|e| failed(op, e))?;
                    Ok(WriteRequest::builder().put_request(put).build())
                })
                .collect::<Result<Vec<_>, CacheError>>()?;
            for attempt in 0..ATTEMPTS {
                shared.trip();
                let out = shared
                    .client
                    .batch_write_item()
                    .request_items(&shared.table, requests)
                    .send()
                    .await
                    .map_err(|e| shared.error(op, e))?;
                requests = out
                    .unprocessed_items()
                    .and_then(|left| left.get(&shared.table).cloned())
                    .unwrap_or_default();
                if requests.is_empty() {
                    break;
                }
                if attempt + 1 == ATTEMPTS {
                    return Err(unavailable(
                        op,
                        format!("{} records left unprocessed", requests.len()),
                    ));
                }
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }

    /// Every item of partition `pk` whose sort key starts with `sk_prefix` (all when empty),
    /// read consistently, page after page.
    async fn query(
        &self,
        op: &'static str,
        pk: String,
        sk_prefix: &str,
        limit: Option<i32>,
    ) -> Result<Vec<Item>, CacheError> {
        let shared = &self.shared;
        let mut items = Vec::new();
        let mut start = None;
        loop {
            shared.trip();
            let mut query = shared
                .client
                .query()
                .table_name(&shared.table)
                .consistent_read(true)
                .expression_attribute_values(":pk", AttributeValue::S(pk.clone()))
                .set_exclusive_start_key(start)
                .set_limit(limit);
            query = if sk_prefix.is_empty() {
                query.key_condition_expression("pk = :pk")
            } else {
                query
                    .key_condition_expression("pk = :pk AND begins_with(sk, :sk)")
                    .expression_attribute_values(":sk", s(sk_prefix))
            };
            let out = query.send().await.map_err(|e| shared.error(op, e))?;
            items.extend(out.items().iter().cloned());
            start = out.last_evaluated_key().cloned();
            if start.is_none() || limit.is_some() {
                return Ok(items);
            }
        }
    }

    async fn get(&self, op: &'static str, key: Item) -> Result<Option<Item>, CacheError> {
        let shared = &self.shared;
        shared.trip();
        let out = shared
            .client
            .get_item()
            .table_name(&shared.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| shared.error(op, e))?;
        Ok(out.item().cloned())
    }

    /// Runs `calls` concurrently, `IN_FLIGHT` at a time, on the runtime.
    async fn concurrently<F>(&self, calls: Vec<F>) -> Result<(), CacheError>
    where
        F: Future<Output = Result<(), CacheError>> + Send + 'static,
    {
        let mut calls = calls.into_iter().peekable();
        while calls.peek().is_some() {
            let handles: Vec<_> = calls.by_ref().take(IN_FLIGHT).map(tokio::spawn).collect();
            for handle in handles {
                handle.await.map_err(|e| failed("write", e))??;
            }
        }
        Ok(())
    }

    /// Records times in partition `<ns>#<kind>#<repository>`, each kept only when later than the one
    /// recorded (a condition, so concurrent instances agree).
    fn record_times<'a>(
        &self,
        kind: &str,
        records: impl Iterator<Item = (&'a RepoName, String, SystemTime)>,
    ) -> Result<(), CacheError> {
        let calls: Vec<_> = records
            .map(|(repo, sk, at)| {
                let shared = Arc::clone(&self.shared);
                let pk = format!("{}#{kind}#{repo}", self.prefix);
                async move {
                    shared.trip();
                    let written = shared
                        .client
                        .update_item()
                        .table_name(&shared.table)
                        .set_key(Some(key(pk, &sk)))
                        .update_expression("SET #at = :at")
                        .condition_expression("attribute_not_exists(#at) OR #at < :at")
                        .expression_attribute_names("#at", "at")
                        .expression_attribute_values(":at", n(millis(at)))
                        .send()
                        .await;
                    shared.written("record time", written).map(drop)
                }
            })
            .collect();
        self.shared.run(self.concurrently(calls))
    }

    /// The times recorded in partition `<ns>#<kind>#<repository>`, by sort key (a tag or a
    /// digest).
    fn times<T: std::str::FromStr>(
        &self,
        kind: &str,
        repo: &RepoName,
    ) -> Result<Vec<(T, SystemTime)>, CacheError> {
        const OP: &str = "list times";
        let pk = format!("{}#{kind}#{repo}", self.prefix);
        let items = self.shared.run(self.query(OP, pk, "", None))?;
        items
            .iter()
            .map(|item| {
                let at = number(item, "at", OP)?;
                let name = text(item, "sk", OP)?;
                let name = name
                    .parse()
                    .map_err(|_| failed(OP, format!("recorded {kind} {name:?}")))?;
                Ok((name, UNIX_EPOCH + Duration::from_millis(at)))
            })
            .collect()
    }

    fn lease_key(&self, lease: LeaseKey) -> Item {
        key(format!("{}#leases", self.prefix), lease.as_str())
    }
}

impl DedupeIndex for DynamoDbCache {
    fn put(&self, digest: &Digest, path: &StoragePath) -> Result<(), CacheError> {
        self.add(digest, path).map(drop)
    }

    /// The paths in BatchWriteItems, then the originals (first path of each digest, unless
    /// one is recorded), concurrently: DynamoDB has no batch of conditional writes but a
    /// transaction, which would fail whole on any original already there.
    fn put_many(&self, records: &[(Digest, StoragePath)]) -> Result<(), CacheError> {
        let mut firsts = Vec::new();
        let (mut digests, mut recorded) = (HashSet::new(), HashSet::new());
        let mut items = Vec::new();
        for (digest, path) in records {
            // BatchWriteItem refuses a request naming one item twice.
            if recorded.insert((digest, path)) {
                items.push(self.copy_item(digest, path));
                if digests.insert(digest) {
                    firsts.push((digest, path));
                }
            }
        }
        self.shared.run(async {
            self.batch_put("record paths", items).await?;
            let calls: Vec<_> = firsts
                .into_iter()
                .map(|(digest, path)| {
                    let cache = DynamoDbCache {
                        shared: Arc::clone(&self.shared),
                        prefix: self.prefix.clone(),
                    };
                    let (digest, path) = (digest.clone(), path.clone());
                    async move { cache.set_original_if_none(&digest, &path).await.map(drop) }
                })
                .collect();
            self.concurrently(calls).await
        })
    }

    /// The original set unless there is one (answering the one before) and the path recorded,
    /// as two requests sent at once: one round trip's wait.
    fn add(&self, digest: &Digest, path: &StoragePath) -> Result<Option<StoragePath>, CacheError> {
        let shared = &self.shared;
        let record = {
            let shared = Arc::clone(shared);
            let item = self.copy_item(digest, path);
            async move { shared.put("record path", item).await }
        };
        shared.run(async {
            let recorded = tokio::spawn(record);
            let before = self.set_original_if_none(digest, path).await;
            recorded.await.map_err(|e| failed("record path", e))??;
            before
        })
    }

    fn paths(&self, digest: &Digest) -> Result<Vec<StoragePath>, CacheError> {
        const OP: &str = "list paths";
        let items = self
            .shared
            .run(self.query(OP, self.blob_pk(digest), "", None))?;
        let Some(head) = items
            .iter()
            .find(|i| text(i, "sk", OP).ok() == Some(ORIGINAL))
        else {
            return Ok(Vec::new());
        };
        let original = parse_path(text(head, "path", OP)?, OP)?;
        let mut paths = vec![original];
        for item in &items {
            if text(item, "sk", OP)?.starts_with(COPY) {
                let path = parse_path(text(item, "path", OP)?, OP)?;
                if path != paths[0] {
                    paths.push(path);
                }
            }
        }
        Ok(paths)
    }

    fn original(&self, digest: &Digest) -> Result<Option<StoragePath>, CacheError> {
        const OP: &str = "get original";
        let head = self
            .shared
            .run(self.get(OP, key(self.blob_pk(digest), ORIGINAL)))?;
        head.map(|h| parse_path(text(&h, "path", OP)?, OP))
            .transpose()
    }

    /// One transaction: the original replaced and its path recorded.
    fn put_original(&self, digest: &Digest, path: &StoragePath) -> Result<(), CacheError> {
        const OP: &str = "replace original";
        let shared = &self.shared;
        let update = Update::builder()
            .table_name(&shared.table)
            .set_key(Some(key(self.blob_pk(digest), ORIGINAL)))
            .update_expression("SET #p = :p")
            .expression_attribute_names("#p", "path")
            .expression_attribute_values(":p", s(path.as_str()))
            .build()
            .map_err(|e| failed(OP, e))?;
        let put = Put::builder()
            .table_name(&shared.table)
            .set_item(Some(self.copy_item(digest, path)))
            .build()
            .map_err(|e| failed(OP, e))?;
        shared.run(async {
            shared.trip();
            shared
                .client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().update(update).build())
                .transact_items(TransactWriteItem::builder().put(put).build())
                .send()
                .await
                .map(drop)
                .map_err(|e| shared.error(OP, e))
        })
    }

    /// The path's record deleted; when it was the original, another recorded path replaces
    /// it, or, with none left, the digest is forgotten, each only if the original is still
    /// the removed path (so of concurrent removers, the first to write wins, and an original
    /// set meanwhile by another instance stays).
    fn remove(&self, digest: &Digest, path: &StoragePath) -> Result<(), CacheError> {
        const OP: &str = "remove path";
        let shared = &self.shared;
        let pk = self.blob_pk(digest);
        shared.run(async {
            shared.trip();
            shared
                .client
                .delete_item()
                .table_name(&shared.table)
                .set_key(Some(key(pk.clone(), &copy_sk(path))))
                .send()
                .await
                .map_err(|e| shared.error(OP, e))?;
            let head = self.get(OP, key(pk.clone(), ORIGINAL)).await?;
            let is_original = head
                .as_ref()
                .is_some_and(|h| text(h, "path", OP).ok() == Some(path.as_str()));
            if !is_original {
                return Ok(());
            }
            let next = self
                .query(OP, pk.clone(), COPY, Some(2))
                .await?
                .iter()
                .map(|item| text(item, "path", OP).map(str::to_string))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .find(|p| p != path.as_str());
            shared.trip();
            // A condition failing means another instance changed the original first: theirs
            // stands.
            match next {
                Some(next) => {
                    let promoted = shared
                        .client
                        .update_item()
                        .table_name(&shared.table)
                        .set_key(Some(key(pk, ORIGINAL)))
                        .update_expression("SET #p = :next")
                        .condition_expression("#p = :removed")
                        .expression_attribute_names("#p", "path")
                        .expression_attribute_values(":next", s(&next))
                        .expression_attribute_values(":removed", s(path.as_str()))
                        .send()
                        .await;
                    shared.written(OP, promoted).map(drop)
                }
                None => {
                    let forgotten = shared
                        .client
                        .delete_item()
                        .table_name(&shared.table)
                        .set_key(Some(key(pk, ORIGINAL)))
                        .condition_expression("#p = :removed")
                        .expression_attribute_names("#p", "path")
                        .expression_attribute_values(":removed", s(path.as_str()))
                        .send()
                        .await;
                    shared.written(OP, forgotten).map(drop)
                }
            }
        })
    }
}

impl UsageLog for DynamoDbCache {
    fn record_pushes(&self, pushes: &[(RepoName, Tag, SystemTime)]) -> Result<(), CacheError> {
        self.record_times(
            "pushed",
            pushes
                .iter()
                .map(|(repo, tag, at)| (repo, tag.as_str().to_string(), *at)),
        )
    }

    fn record_pulls(&self, pulls: &[(RepoName, Digest, SystemTime)]) -> Result<(), CacheError> {
        self.record_times(
            "pulled",
            pulls
                .iter()
                .map(|(repo, digest, at)| (repo, digest.to_string(), *at)),
        )
    }

    fn pushes(&self, repo: &RepoName) -> Result<Vec<(Tag, SystemTime)>, CacheError> {
        self.times("pushed", repo)
    }

    fn pulls(&self, repo: &RepoName) -> Result<Vec<(Digest, SystemTime)>, CacheError> {
        self.times("pulled", repo)
    }
}

impl Markers for DynamoDbCache {
    fn marker(&self, marker: MarkerKey) -> Result<Option<String>, CacheError> {
        let item = self.shared.run(self.get(
            "get marker",
            key(format!("{}#markers", self.prefix), marker.as_str()),
        ))?;
        item.map(|i| text(&i, "value", "get marker").map(str::to_string))
            .transpose()
    }

    fn set_marker(&self, marker: MarkerKey, value: &str) -> Result<(), CacheError> {
        let shared = &self.shared;
        let mut item = key(format!("{}#markers", self.prefix), marker.as_str());
        item.insert("value".into(), s(value));
        shared.run(shared.put("set marker", item))
    }
}

impl Leases for DynamoDbCache {
    fn acquire(&self, lease: LeaseKey, holder: &str, ttl: Duration) -> Result<bool, CacheError> {
        let shared = &self.shared;
        let now = SystemTime::now();
        shared.run(async {
            shared.trip();
            let taken = shared
                .client
                .update_item()
                .table_name(&shared.table)
                .set_key(Some(self.lease_key(lease)))
                .update_expression("SET #h = :h, #u = :until")
                .condition_expression("attribute_not_exists(#h) OR #h = :h OR #u < :now")
                .expression_attribute_names("#h", "holder")
                .expression_attribute_names("#u", "until")
                .expression_attribute_values(":h", s(holder))
                .expression_attribute_values(":until", n(millis(now + ttl)))
                .expression_attribute_values(":now", n(millis(now)))
                .send()
                .await;
            shared.written("acquire lease", taken)
        })
    }

    fn release(&self, lease: LeaseKey, holder: &str) -> Result<(), CacheError> {
        let shared = &self.shared;
        shared.run(async {
            shared.trip();
            let released = shared
                .client
                .delete_item()
                .table_name(&shared.table)
                .set_key(Some(self.lease_key(lease)))
                .condition_expression("#h = :h")
                .expression_attribute_names("#h", "holder")
                .expression_attribute_values(":h", s(holder))
                .send()
                .await;
            shared.written("release lease", released).map(drop)
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cache::conformance;
    use crate::storage::driver::s3::Credentials;

    fn keys() -> Provider {
        Provider::new(Credentials {
            access_key: "testing".into(),
            secret_key: "testing".into(),
            session_token: None,
            source: "test",
            refresh: None,
        })
    }

    fn options(endpoint: String, table: &str, timeout: Duration) -> DynamoDbOptions {
        DynamoDbOptions {
            endpoint: Some(endpoint),
            region: "us-east-1".into(),
            table: table.into(),
            timeout,
        }
    }

    /// A table of its own on moto (`scripts/s3-services.sh`), so it starts empty.
    pub(crate) fn fresh_on_moto() -> DynamoDb {
        let table = format!("berth-{}", uuid::Uuid::new_v4().simple());
        let options = options(
            crate::test_services::ServiceEnv::load(".s3-services", "scripts/s3-services.sh")
                .require("BERTH_DYNAMODB_ENDPOINT"),
            &table,
            Duration::from_secs(10),
        );
        DynamoDb::open(options, keys()).unwrap()
    }

    /// The four suites, each over a table of its own (so it starts empty).
    #[test]
    fn dynamodb_conformance() {
        let table = fresh_on_moto();
        conformance::dedupe_index(|ns| table.namespace(ns));
        let table = fresh_on_moto();
        conformance::usage_log(|ns| table.namespace(ns));
        let table = fresh_on_moto();
        conformance::markers(|ns| table.namespace(ns));
        let table = fresh_on_moto();
        conformance::leases(|ns| table.namespace(ns));
    }

    /// A landing blob's `add` waits for one round trip: its two requests go out together.
    #[test]
    fn add_sends_two_requests_at_once() {
        let table = fresh_on_moto();
        let cache = table.namespace(&Namespace::new("storage"));
        let d = Digest::sha256_of(b"x");
        let path = |s: &str| StoragePath::from_components([s]).unwrap();
        cache.add(&d, &path("a")).unwrap();
        let before = table.round_trips();
        assert_eq!(cache.add(&d, &path("b")).unwrap(), Some(path("a")));
        assert_eq!(table.round_trips() - before, 2);
    }

    fn delete_table(table: &DynamoDb) {
        let shared = &table.shared;
        let deleting = shared
            .client
            .delete_table()
            .table_name(&shared.table)
            .send();
        shared.runtime.block_on(deleting).unwrap();
    }

    /// A table deleted while berth was stopped is created again at the next start, and reads
    /// as empty (the start-up pass then records everything again); one deleted while berth
    /// runs, at the call after the one that found it gone.
    #[test]
    fn a_missing_table_is_created_at_start() {
        let table = fresh_on_moto();
        let options = options(
            crate::test_services::ServiceEnv::load(".s3-services", "scripts/s3-services.sh")
                .require("BERTH_DYNAMODB_ENDPOINT"),
            &table.shared.table,
            Duration::from_secs(10),
        );
        let pass = MarkerKey::new("pass");
        let ns = Namespace::new("storage");
        table.namespace(&ns).set_marker(pass, "done").unwrap();
        delete_table(&table);
        drop(table);
        let again = DynamoDb::open(options, keys()).unwrap();
        assert!(
            again.shared.ready.load(Ordering::SeqCst),
            "created at start"
        );
        let cache = again.namespace(&ns);
        assert_eq!(cache.marker(pass).unwrap(), None);
        cache.set_marker(pass, "again").unwrap();
        assert_eq!(cache.marker(pass).unwrap().as_deref(), Some("again"));
        // Deleted while running: the call that finds it gone is unavailable, the next one
        // creates it again, as the first call that gets through does after an outage at start.
        delete_table(&again);
        let e = cache.marker(pass).unwrap_err();
        assert!(matches!(e, CacheError::Unavailable { .. }), "{e}");
        assert_eq!(cache.marker(pass).unwrap(), None);
    }

    /// A DynamoDB that accepts connections but never answers: berth still starts, and every
    /// call fails `Unavailable` once its time-out has passed (not hanging a request worker).
    #[test]
    fn a_silent_endpoint_is_unavailable_within_the_time_out() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", silent.local_addr().unwrap());
        let timeout = Duration::from_millis(600);
        let table = DynamoDb::open(options(endpoint, "t", timeout), keys())
            .expect("an unreachable cache does not stop the start");
        let cache = table.namespace(&Namespace::new("storage"));
        let started = Instant::now();
        let e = cache.marker(MarkerKey::new("pass")).unwrap_err();
        assert!(matches!(e, CacheError::Unavailable { .. }), "{e}");
        // Generous: the check is that the call ends, with its time-out, rather than waiting
        // for an answer that never comes.
        assert!(started.elapsed() < timeout * 5, "{:?}", started.elapsed());
        let e = cache
            .add(
                &Digest::sha256_of(b"x"),
                &StoragePath::from_components(["a"]).unwrap(),
            )
            .unwrap_err();
        assert!(matches!(e, CacheError::Unavailable { .. }), "{e}");
    }
}
