//! A service's background work as one value to wait on.

use crate::error::Error;

/// A service's background work: its processor (and helpers), running until its shutdown
/// token is cancelled.
#[derive(Debug)]
pub struct Task {
    name: String,
    handle: tokio::task::JoinHandle<Result<(), Error>>,
}

impl Task {
    /// Runs `work` on the executor as `name`'s task.
    pub fn spawn(
        name: impl Into<String>,
        work: impl std::future::Future<Output = Result<(), Error>> + Send + 'static,
    ) -> Self {
        Self {
            name: name.into(),
            handle: tokio::spawn(work),
        }
    }

    /// Waits for it to end (after its shutdown token is cancelled): its result, or an internal
    /// error naming it if it panicked.
    pub async fn stopped(self) -> Result<(), Error> {
        self.handle
            .await
            .map_err(|e| Error::Internal(format!("{} panicked: {e}", self.name)))?
    }
}
