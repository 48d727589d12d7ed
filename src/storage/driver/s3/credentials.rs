//! Who signs the S3 requests: the keys found at start (`config::s3` looks in zot's order:
//! the config, the environment, the shared credentials file), or, last, instance credentials
//! (an ECS container endpoint, else EC2's instance metadata with an IMDSv2 token). Instance
//! credentials are temporary: `Provider` fetches them again before their `Expiration`.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Keys that sign requests. `Debug` prints no secret.
#[derive(Clone)]
pub struct Credentials {
    /// Access key id.
    pub access_key: String,
    /// Secret access key.
    pub secret_key: String,
    /// Session token of temporary credentials.
    pub session_token: Option<String>,
    /// Where they were found, for the log.
    pub source: &'static str,
    /// When temporary credentials stop working, and where fresh ones come from.
    pub refresh: Option<Refresh>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key", &self.access_key)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Temporary credentials: their expiry and their source.
#[derive(Clone, Debug)]
pub struct Refresh {
    /// The credentials' `Expiration`.
    pub expires: SystemTime,
    /// Where they came from.
    pub from: Instance,
}

/// A source of instance credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instance {
    /// ECS (`AWS_CONTAINER_CREDENTIALS_FULL_URI` / `_RELATIVE_URI`): one GET, with the
    /// `Authorization` token when the platform gives one.
    Container {
        /// The endpoint.
        url: String,
        /// `AWS_CONTAINER_AUTHORIZATION_TOKEN` (or `_FILE`'s contents).
        token: Option<String>,
    },
    /// EC2 instance metadata at `endpoint`: a session token (IMDSv2), the role's name, then
    /// its credentials.
    Ec2 {
        /// `http://169.254.169.254`, or `AWS_EC2_METADATA_SERVICE_ENDPOINT`.
        endpoint: String,
    },
}

/// Every instance source together has about this long: a machine without any must not wait
/// at start.
const INSTANCE_TIMEOUT: Duration = Duration::from_millis(1000);

/// Temporary credentials are fetched again this long before they expire, as AWS's SDKs do,
/// so no request is signed with keys about to lapse.
const REFRESH_AHEAD: Duration = Duration::from_secs(5 * 60);

/// A failed refresh is tried again after this long while the current keys still work.
const RETRY_AFTER: Duration = Duration::from_secs(10);

/// ECS's credentials endpoint, which `_RELATIVE_URI` is relative to.
const ECS_HOST: &str = "http://169.254.170.2";

/// EC2's instance metadata endpoint.
const IMDS_ENDPOINT: &str = "http://169.254.169.254";

impl Instance {
    /// The instance sources the environment (read through `env`) offers, in the order AWS's
    /// SDKs try them: the container endpoint, then EC2's metadata unless
    /// `AWS_EC2_METADATA_DISABLED=true`.
    pub fn sources(env: &dyn Fn(&str) -> Option<String>) -> Result<Vec<Instance>, String> {
        let var = |name: &str| env(name).filter(|v| !v.is_empty());
        let mut sources = Vec::new();
        let url = match (
            var("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
            var("AWS_CONTAINER_CREDENTIALS_FULL_URI"),
        ) {
            (Some(relative), _) => Some(format!("{ECS_HOST}{relative}")),
            (None, Some(full)) => {
                // AWS's SDKs take a full URI only over HTTPS or to a local agent: a token
                // sent elsewhere in clear could be read on the way.
                let host = full
                    .split_once("://")
                    .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or_default())
                    .unwrap_or_default();
                let host = host.rsplit_once(':').map_or(host, |(h, port)| {
                    if port.chars().all(|c| c.is_ascii_digit()) {
                        h
                    } else {
                        host
                    }
                });
                let local = [
                    "127.0.0.1",
                    "localhost",
                    "[::1]",
                    "169.254.170.2",
                    "169.254.170.23",
                ]
                .contains(&host);
                let allowed =
                    full.starts_with("https://") || (full.starts_with("http://") && local);
                if !allowed {
                    return Err(format!(
                        "AWS_CONTAINER_CREDENTIALS_FULL_URI {full:?}: must be https, or http to \
                         a loopback or the ECS/EKS agent's address"
                    ));
                }
                Some(full)
            }
            (None, None) => None,
        };
        if let Some(url) = url {
            let token = match var("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE") {
                Some(file) => Some(
                    std::fs::read_to_string(&file)
                        .map_err(|e| format!("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE {file}: {e}"))?
                        .trim()
                        .to_string(),
                ),
                None => var("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
            };
            sources.push(Instance::Container { url, token });
        }
        let disabled =
            var("AWS_EC2_METADATA_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
        if !disabled {
            let endpoint = var("AWS_EC2_METADATA_SERVICE_ENDPOINT")
                .unwrap_or_else(|| IMDS_ENDPOINT.to_string());
            sources.push(Instance::Ec2 {
                endpoint: endpoint.trim_end_matches('/').to_string(),
            });
        }
        Ok(sources)
    }

    /// Where this source is, for errors and the log.
    pub fn describe(&self) -> String {
        match self {
            Instance::Container { url, .. } => format!("the container endpoint {url}"),
            Instance::Ec2 { endpoint } => format!("EC2 instance metadata at {endpoint}"),
        }
    }

    /// Fetches credentials, giving up after about a second.
    pub fn fetch(&self) -> Result<Credentials, String> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(INSTANCE_TIMEOUT))
            .max_redirects(0)
            .build()
            .into();
        let failed = |e: ureq::Error| format!("{}: {e}", self.describe());
        let (body, source) = match self {
            Instance::Container { url, token } => {
                let mut request = agent.get(url);
                if let Some(token) = token {
                    request = request.header("authorization", token);
                }
                let body = request
                    .call()
                    .map_err(failed)?
                    .body_mut()
                    .read_to_string()
                    .map_err(failed)?;
                (body, "container credentials endpoint")
            }
            Instance::Ec2 { endpoint } => {
                let token = agent
                    .put(format!("{endpoint}/latest/api/token"))
                    .header("x-aws-ec2-metadata-token-ttl-seconds", "21600")
                    .send_empty()
                    .map_err(failed)?
                    .body_mut()
                    .read_to_string()
                    .map_err(failed)?;
                let base = format!("{endpoint}/latest/meta-data/iam/security-credentials/");
                let get = |url: &str| {
                    agent
                        .get(url)
                        .header("x-aws-ec2-metadata-token", token.trim())
                        .call()
                        .map_err(failed)?
                        .body_mut()
                        .read_to_string()
                        .map_err(failed)
                };
                let roles = get(&base)?;
                let role = roles.lines().next().unwrap_or_default().trim();
                if role.is_empty() {
                    return Err(format!("{}: no IAM role attached", self.describe()));
                }
                (get(&format!("{base}{role}"))?, "EC2 instance metadata")
            }
        };
        self.parse(&body, source)
    }

    /// The JSON both endpoints answer with: `AccessKeyId`, `SecretAccessKey`, `Token`,
    /// `Expiration`.
    fn parse(&self, body: &str, source: &'static str) -> Result<Credentials, String> {
        let json: serde_json::Value = serde_json::from_str(body)
            .map_err(|e| format!("{}: not credentials JSON: {e}", self.describe()))?;
        let field = |name: &str| json.get(name).and_then(|v| v.as_str()).map(str::to_string);
        let (Some(access_key), Some(secret_key)) = (field("AccessKeyId"), field("SecretAccessKey"))
        else {
            return Err(format!(
                "{}: the answer has no AccessKeyId and SecretAccessKey",
                self.describe()
            ));
        };
        let expires = field("Expiration")
            .map(|e| {
                super::client::parse_iso8601(&e)
                    .ok_or_else(|| format!("{}: Expiration {e:?} is not a time", self.describe()))
            })
            .transpose()?;
        Ok(Credentials {
            access_key,
            secret_key,
            session_token: field("Token"),
            source,
            refresh: expires.map(|expires| Refresh {
                expires,
                from: self.clone(),
            }),
        })
    }
}

/// The credentials requests are signed with, fetched again before temporary ones expire.
pub struct Provider {
    current: RwLock<Arc<Credentials>>,
    /// One refresh at a time (the other requests keep signing with the current keys), and
    /// when the last one failed: a failing source is asked again only after `RETRY_AFTER`,
    /// not by every request.
    refreshing: Mutex<Option<Instant>>,
}

impl Provider {
    /// Signs with `credentials`, refreshed from their source before they expire.
    pub fn new(credentials: Credentials) -> Provider {
        Provider {
            current: RwLock::new(Arc::new(credentials)),
            refreshing: Mutex::new(None),
        }
    }

    /// The credentials to sign with now.
    pub fn get(&self) -> std::io::Result<Arc<Credentials>> {
        let current = self.current();
        let Some(refresh) = &current.refresh else {
            return Ok(current);
        };
        let now = SystemTime::now();
        if refresh.expires > now + REFRESH_AHEAD {
            return Ok(current);
        }
        let Ok(mut failed) = self.refreshing.try_lock() else {
            // Another request is fetching; these keys still work until they expire.
            if refresh.expires > now {
                return Ok(current);
            }
            let _wait = self.refreshing.lock();
            return Ok(self.current());
        };
        if refresh.expires > now && failed.is_some_and(|at| at.elapsed() < RETRY_AFTER) {
            return Ok(current);
        }
        match refresh.from.fetch() {
            Ok(fresh) => {
                *failed = None;
                tracing::info!(source = fresh.source, "S3 credentials refreshed");
                let fresh = Arc::new(fresh);
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&fresh);
                Ok(fresh)
            }
            Err(e) if refresh.expires > now => {
                *failed = Some(Instant::now());
                tracing::warn!("S3 credentials not refreshed (the current ones still work): {e}");
                Ok(current)
            }
            Err(e) => Err(std::io::Error::other(format!(
                "S3 credentials expired and not refreshed: {e}"
            ))),
        }
    }

    fn current(&self) -> Arc<Credentials> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }
}
