//! S3 credentials as a user supplies them (issue 13, "Credentials"), against s3s-fs, which
//! checks every request's SigV4 signature: keys found in the config, in the environment, or
//! in the shared credentials file under `AWS_PROFILE`, in zot's order (the first source that
//! has both keys wins, right or wrong); wrong keys are refused by S3 and berth says so
//! without printing the secret; no keys anywhere stops the start with an error naming the
//! key. Without the servers the tests fail, naming `scripts/s3-services.sh`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::oci::*;
use crate::util::s3::S3s;
use crate::util::server::{AWS_VARS, BERTH, Berth, Launch, Settings, temp_dir};

const WRONG_SECRET: &str = "not-the-secret-berth-must-not-print";

/// Settings whose store is `bucket` on s3s-fs with `keys` in the config (or none).
fn settings(s3s: &S3s, bucket: &str, keys: Option<(&str, &str)>) -> Settings {
    let mut settings = Settings::default();
    settings
        .storage
        .insert("storageDriver".into(), s3s.storage_driver(bucket, keys));
    settings
}

/// A launch with these environment variables and `HOME` in `home` (so the caller's own
/// `~/.aws` is never read).
fn launch(home: &Path, env: &[(&str, &str)]) -> Launch {
    let mut vars = vec![("HOME".to_string(), home.to_str().unwrap().to_string())];
    vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    Launch {
        env: vars,
        ..Launch::default()
    }
}

/// A credentials file with a wrong `[default]` and the right keys under `[ci]`.
fn credentials_file(home: &Path, s3s: &S3s) {
    let dir = home.join(".aws");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("credentials"),
        format!(
            "[default]\naws_access_key_id = {}\naws_secret_access_key = {WRONG_SECRET}\n\n\
             [ci]\naws_access_key_id = {}\naws_secret_access_key = {}\n",
            s3s.access_key, s3s.access_key, s3s.secret_key
        ),
    )
    .unwrap();
}

/// Pushes and pulls an image, and checks where berth says its keys came from.
#[track_caller]
fn serves(berth: &Berth, source: &str) {
    let image = Image::oci(1330, &[3000]);
    push_image(&berth.client(), "cred/app", "v1", &image);
    assert_image(&berth.client(), "cred/app", "v1", &image);
    let logs = berth.logs();
    assert!(
        logs.contains(&format!("credentials from the {source}")),
        "{logs}"
    );
}

/// A push is refused: S3 denies the signature, berth answers with an OCI error and logs the
/// denial, and the secret appears nowhere.
#[track_caller]
fn refused(berth: &Berth, source: &str) {
    let c = berth.client();
    let blob = b"refused bytes";
    let pushed = c
        .request(
            "POST",
            &format!("/v2/cred/app/blobs/uploads/?digest={}", sha256(blob)),
        )
        .header("Content-Type", "application/octet-stream")
        .body(blob.to_vec())
        .send();
    assert!(pushed.status >= 500, "{pushed}");
    assert!(!pushed.error_codes().is_empty(), "{pushed}");
    assert!(
        !String::from_utf8_lossy(&pushed.body).contains(WRONG_SECRET),
        "{pushed}"
    );
    c.get("/v2/cred/app/tags/list").expect_error_among(&[
        (404, "NAME_UNKNOWN"),
        (500, "UNKNOWN"),
        (503, "UNAVAILABLE"),
    ]);
    let logs = berth.logs();
    assert!(
        logs.contains(&format!("credentials from the {source}")),
        "{logs}"
    );
    assert!(logs.contains("403"), "the denial is not logged:\n{logs}");
    assert!(
        !logs.contains(WRONG_SECRET),
        "the secret is logged:\n{logs}"
    );
}

#[test]
fn s3_keys_are_found_in_the_config_the_environment_and_the_credentials_file() {
    let s3s = S3s::running();
    let bucket = s3s.new_bucket();
    let home = temp_dir();
    let keys = (s3s.access_key.as_str(), s3s.secret_key.as_str());
    let env_keys = [
        ("AWS_ACCESS_KEY_ID", keys.0),
        ("AWS_SECRET_ACCESS_KEY", keys.1),
    ];
    let wrong_env = [
        ("AWS_ACCESS_KEY_ID", keys.0),
        ("AWS_SECRET_ACCESS_KEY", WRONG_SECRET),
    ];

    // The config's keys come first: wrong ones in the environment are not used.
    let berth = Berth::start_launch(
        settings(&s3s, &bucket, Some(keys)),
        launch(home.path(), &wrong_env),
    );
    serves(&berth, "config");
    drop(berth);

    let berth = Berth::start_launch(
        settings(&s3s, &bucket, None),
        launch(home.path(), &env_keys),
    );
    serves(&berth, "environment");
    drop(berth);

    // The file's profile named by AWS_PROFILE, not its [default].
    credentials_file(home.path(), &s3s);
    let berth = Berth::start_launch(
        settings(&s3s, &bucket, None),
        launch(home.path(), &[("AWS_PROFILE", "ci")]),
    );
    serves(&berth, "shared credentials file");
}

#[test]
fn wrong_s3_keys_are_refused_from_whichever_source_comes_first() {
    let s3s = S3s::running();
    let bucket = s3s.new_bucket();
    let home = temp_dir();
    credentials_file(home.path(), &s3s);
    let access = s3s.access_key.as_str();
    // (keys in the config, environment, the source berth must name)
    type Case<'a> = (Option<(&'a str, &'a str)>, Vec<(&'a str, &'a str)>, &'a str);
    let cases: [Case; 3] = [
        // Wrong keys in the config, though the profile has the right ones.
        (
            Some((access, WRONG_SECRET)),
            vec![("AWS_PROFILE", "ci")],
            "config",
        ),
        // Wrong keys in the environment come before the right profile.
        (
            None,
            vec![
                ("AWS_ACCESS_KEY_ID", access),
                ("AWS_SECRET_ACCESS_KEY", WRONG_SECRET),
                ("AWS_PROFILE", "ci"),
            ],
            "environment",
        ),
        // Without AWS_PROFILE the file's [default] is used, and it is wrong.
        (None, vec![], "shared credentials file"),
    ];
    for (keys, env, source) in cases {
        let berth = Berth::start_launch(settings(&s3s, &bucket, keys), launch(home.path(), &env));
        refused(&berth, source);
    }
}

#[test]
fn without_s3_keys_berth_does_not_start_and_names_the_key() {
    let s3s = S3s::running();
    let bucket = s3s.new_bucket();
    let dir = temp_dir();
    let config = dir.path().join("config.json");
    let storage: Value = json!({
        "rootDirectory": dir.path().join("root"),
        "storageDriver": s3s.storage_driver(&bucket, None),
    });
    std::fs::write(
        &config,
        json!({ "storage": storage, "http": { "address": "127.0.0.1", "port": "0" } }).to_string(),
    )
    .unwrap();
    let mut command = Command::new(BERTH);
    command
        .arg("serve")
        .arg(&config)
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for var in AWS_VARS {
        command.env_remove(var);
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth started without S3 credentials");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("storage.storageDriver") && stderr.contains("no S3 credentials"),
        "{stderr}"
    );
}
