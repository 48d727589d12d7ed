//! The composition root: turns a resolved `Config` into a driver, a store and a bound server.

use crate::config::Config;
use crate::http::server::{BindError, Server};
use crate::storage::Store;
use crate::storage::driver::DriverError;
use crate::storage::driver::local::LocalDriver;
use std::sync::Arc;

/// Why berth could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The storage root could not be opened.
    #[error("storage.rootDirectory: {0}")]
    Storage(#[from] DriverError),
    /// The listener could not be bound.
    #[error(transparent)]
    Bind(#[from] BindError),
}

/// A store and a bound server, ready to run.
pub struct App {
    /// The bound front end.
    pub server: Server,
    /// The store it serves.
    pub store: Arc<Store>,
}

impl App {
    /// Opens storage and binds the listener.
    pub fn start(config: &Config) -> Result<App, StartError> {
        let storage = &config.storage;
        let driver = LocalDriver::new(&storage.root_directory, storage.commit, storage.writer)?;
        tracing::info!(
            root = %storage.root_directory.display(),
            commit = storage.commit,
            requested = ?storage.writer,
            "storage ready; upload writer: {}",
            driver.writer_name()
        );
        let store = Arc::new(Store::new(Arc::new(driver)));
        let server = Server::bind(&config.http)?;
        Ok(App { server, store })
    }

    /// Serves until the process ends.
    pub fn run(self) {
        self.server.run(self.store);
    }
}
