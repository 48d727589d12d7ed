//! The test servers that `scripts/s3-services.sh` and `scripts/redis-services.sh` start:
//! their variables (endpoints, keys, PIDs), from the environment (`scripts/test.sh` exports
//! them) or else from the env file the script wrote under its state directory. Shared by
//! the unit tests and, through a `#[path]` module, by the integration tests' harness.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The variables one script wrote.
pub(crate) struct ServiceEnv {
    file: PathBuf,
    script: &'static str,
    saved: HashMap<String, String>,
}

impl ServiceEnv {
    /// The variables `script` (named in messages) wrote to `<state>/env` in the checkout.
    pub(crate) fn load(state: &str, script: &'static str) -> ServiceEnv {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(state)
            .join("env");
        let saved = std::fs::read_to_string(&file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ServiceEnv {
            file,
            script,
            saved,
        }
    }

    /// `name` from the environment, else from the file.
    pub(crate) fn get(&self, name: &str) -> Option<String> {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| self.saved.get(name).cloned())
    }

    /// `name`, or a panic saying how to start the servers.
    pub(crate) fn require(&self, name: &str) -> String {
        self.get(name).unwrap_or_else(|| {
            panic!(
                "{name} is not set and {} does not name it: start the test servers with \
                 `{} start` (scripts/test.sh starts and stops them)",
                self.file.display(),
                self.script
            )
        })
    }
}
