//! [`Readiness`]: whether this node should get traffic, as `GET /ready` reports it.

use std::sync::{Arc, Mutex, PoisonError};

/// Whether this node should get traffic now, and if not, why: what `GET /ready` answers
/// (200, or 503 `NOT_READY` with the reason). Ready until told otherwise; whoever watches
/// the node's dependencies (the server probes its message store) says when it is not.
/// Cheap to clone: clones share one state.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<Mutex<Option<String>>>);

impl Readiness {
    /// A node ready for traffic.
    pub fn new() -> Self {
        Self::default()
    }

    /// Marks the node ready.
    pub fn set_ready(&self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Marks the node not ready, for `reason` (shown to the orchestrator asking).
    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(reason.into());
    }

    /// `Ok` when ready, else the reason.
    pub fn check(&self) -> Result<(), String> {
        match &*self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }
}
