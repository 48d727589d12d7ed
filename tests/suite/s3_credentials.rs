//! Where berth on S3 finds its keys (issue 13, "Credentials"), against s3s-fs, which checks
//! every signature, so a push that works was signed with the keys meant: the config's
//! `accesskey`/`secretkey`, the environment, the shared credentials file with `AWS_PROFILE`
//! and with `[default]`; instance credentials from EC2's metadata (moto serves it; moto takes
//! any signature, so there the log shows which keys were found). Wrong keys, a missing bucket
//! and no keys at all are refused at start, naming the store's key and the bucket, never a
//! secret. Every variable is set in the spawned berth's environment only, and EC2's metadata
//! endpoint is always a loopback one or disabled: no test reaches 169.254.x.x.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::util::oci::*;
use crate::util::s3::{Bucket, S3s, moto_metadata, storage_driver_at};
use crate::util::server::{self, Berth, Launch, Settings, temp_dir};

/// An environment with none of the test process's credentials: `HOME` an empty directory
/// (no `~/.aws`), EC2's metadata disabled, then `extra`.
fn environment(home: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("HOME".to_string(), home.display().to_string()),
        ("AWS_EC2_METADATA_DISABLED".to_string(), "true".to_string()),
    ];
    for name in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_SHARED_CREDENTIALS_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ] {
        env.push((name.to_string(), String::new()));
    }
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push((k.to_string(), v.to_string()));
    }
    env
}

/// Starts berth on `driver` with `env`, pushes an image and pulls it back; returns its log.
fn push_and_pull(driver: serde_json::Value, env: Vec<(String, String)>, seed: u64) -> String {
    let mut settings = Settings::default();
    settings.storage.insert("storageDriver".into(), driver);
    let berth = Berth::start_launch(
        settings,
        Launch {
            env,
            ..Launch::default()
        },
    );
    let image = Image::oci(seed, &[100, 70_000]);
    push_image(&berth.client(), "creds/app", "v1", &image);
    assert_image(&berth.client(), "creds/app", "v1", &image);
    berth.logs()
}

/// Runs `berth serve` on `driver` with `env`, which must refuse to start; its stderr.
fn refused_at_start(driver: serde_json::Value, env: Vec<(String, String)>) -> String {
    let dir = temp_dir();
    let config = json!({
        "storage": { "rootDirectory": dir.path().join("root"), "storageDriver": driver },
        "http": { "address": "127.0.0.1", "port": "0" },
    });
    server::refused_at_start(&config, &env)
}

#[test]
fn credentials_from_config_environment_and_file_sign_pushes() {
    let s3s = S3s::running();
    let endpoint = &s3s.endpoint;
    let (access, secret) = (s3s.access_key.as_str(), s3s.secret_key.as_str());
    let home = temp_dir();
    let bucket = s3s.new_bucket();

    // The config's keys win over wrong ones in the environment.
    let log = push_and_pull(
        storage_driver_at(endpoint, &bucket, Some((access, secret))),
        environment(
            home.path(),
            &[
                ("AWS_ACCESS_KEY_ID", "wrong"),
                ("AWS_SECRET_ACCESS_KEY", "wrong"),
            ],
        ),
        1,
    );
    assert!(log.contains("credentials from the config"), "{log}");

    let log = push_and_pull(
        storage_driver_at(endpoint, &bucket, None),
        environment(
            home.path(),
            &[
                ("AWS_ACCESS_KEY_ID", access),
                ("AWS_SECRET_ACCESS_KEY", secret),
            ],
        ),
        2,
    );
    assert!(log.contains("credentials from the environment"), "{log}");

    // A credentials file: the profile AWS_PROFILE names (the default one is wrong), then
    // `[default]` in ~/.aws/credentials when no profile is named.
    let file = home.path().join("elsewhere");
    std::fs::write(
        &file,
        format!(
            "[default]\naws_access_key_id = wrong\naws_secret_access_key = wrong\n\n\
             [berth]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n"
        ),
    )
    .unwrap();
    let log = push_and_pull(
        storage_driver_at(endpoint, &bucket, None),
        environment(
            home.path(),
            &[
                ("AWS_SHARED_CREDENTIALS_FILE", file.to_str().unwrap()),
                ("AWS_PROFILE", "berth"),
            ],
        ),
        3,
    );
    assert!(
        log.contains("credentials from the shared credentials file"),
        "{log}"
    );
    std::fs::create_dir_all(home.path().join(".aws")).unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        format!("[default]\naws_access_key_id={access}\naws_secret_access_key={secret}\n"),
    )
    .unwrap();
    let log = push_and_pull(
        storage_driver_at(endpoint, &bucket, None),
        environment(home.path(), &[]),
        4,
    );
    assert!(
        log.contains("credentials from the shared credentials file"),
        "{log}"
    );
}

/// With no keys anywhere, EC2's instance metadata (a moto on loopback) gives temporary ones,
/// with their session token.
#[test]
fn instance_credentials_sign_pushes_on_moto() {
    let bucket = Bucket::new();
    let moto = &bucket.endpoint;
    let metadata = moto_metadata();
    let home = temp_dir();
    let log = push_and_pull(
        {
            let mut driver = storage_driver_at(moto, &bucket.name, None);
            driver["region"] = "eu-west-1".into();
            driver
        },
        environment(
            home.path(),
            &[
                ("AWS_EC2_METADATA_DISABLED", "false"),
                ("AWS_EC2_METADATA_SERVICE_ENDPOINT", &metadata),
            ],
        ),
        5,
    );
    assert!(
        log.contains("credentials from the EC2 instance metadata"),
        "{log}"
    );
}

/// Wrong keys (s3s-fs refuses the signature), a bucket that does not exist, and no keys at
/// all: berth does not start, and says which store, which bucket and why, printing no
/// secret.
#[test]
fn wrong_or_missing_credentials_are_refused_at_start() {
    let s3s = S3s::running();
    let endpoint = &s3s.endpoint;
    let access = s3s.access_key.as_str();
    let home = temp_dir();
    let bucket = s3s.new_bucket();

    let stderr = refused_at_start(
        storage_driver_at(endpoint, &bucket, Some((access, "not-the-secret"))),
        environment(home.path(), &[]),
    );
    assert!(
        stderr.contains("storage.storageDriver")
            && stderr.contains(&format!("bucket {bucket} at {endpoint}"))
            && stderr.contains("access denied"),
        "{stderr}"
    );
    assert!(!stderr.contains("not-the-secret"), "{stderr}");

    let stderr = refused_at_start(
        storage_driver_at(endpoint, &bucket, None),
        environment(
            home.path(),
            &[
                ("AWS_ACCESS_KEY_ID", "nobody"),
                ("AWS_SECRET_ACCESS_KEY", "env-secret"),
            ],
        ),
    );
    assert!(
        stderr.contains("access denied") && !stderr.contains("env-secret"),
        "{stderr}"
    );

    let secret = s3s.secret_key.as_str();
    let stderr = refused_at_start(
        storage_driver_at(endpoint, "no-such-bucket", Some((access, secret))),
        environment(home.path(), &[]),
    );
    assert!(
        stderr.contains("storage.storageDriver") && stderr.contains("no such bucket"),
        "{stderr}"
    );
    assert!(!stderr.contains(secret), "{stderr}");

    // Nothing anywhere, and EC2's metadata endpoint a loopback port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let stderr = refused_at_start(
        storage_driver_at(endpoint, &bucket, None),
        environment(
            home.path(),
            &[
                ("AWS_EC2_METADATA_DISABLED", "false"),
                (
                    "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                    &format!("http://127.0.0.1:{closed}"),
                ),
            ],
        ),
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains("storage.storageDriver: no AWS credentials")
            && stderr.contains(&format!(
                "EC2 instance metadata at http://127.0.0.1:{closed}"
            )),
        "{stderr}"
    );
}

/// The wire attributes reach the requests from the config file: virtual-hosted requests
/// (`BUCKET.localhost:PORT`) signed with Signature Version 2, with a storage class, a canned
/// ACL, encryption and a user agent, pass s3s-fs's checks for a push and a pull, and
/// `loglevel: debug` logs each request.
#[test]
fn wire_attributes_from_the_config_push_and_pull() {
    let s3s = S3s::running();
    let endpoint = s3s.endpoint.replace("127.0.0.1", "localhost");
    let bucket = s3s.new_bucket();
    let mut driver = storage_driver_at(&endpoint, &bucket, s3s.keys());
    for (key, value) in [
        ("forcepathstyle", json!(false)),
        ("v4auth", json!(false)),
        ("storageclass", json!("REDUCED_REDUNDANCY")),
        ("objectacl", json!("bucket-owner-full-control")),
        ("encrypt", json!(true)),
        ("useragent", json!("berth-it/1")),
        ("loglevel", json!("debug")),
    ] {
        driver[key] = value;
    }
    let home = temp_dir();
    let log = push_and_pull(driver, environment(home.path(), &[]), 6);
    assert!(log.contains("(virtual-hosted)"), "{log}");
    assert!(
        log.contains("S3 request") && log.contains(&format!("bucket=\"{bucket}\"")),
        "{log}"
    );
}
