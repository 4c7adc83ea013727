//! Synchronisation primitives, swapped for loom's under `--cfg loom` so that the matching code
//! can be model-checked without changing a line of it (the same shim tokio keeps in `src/loom`).

#[cfg(loom)]
pub(crate) use loom::sync::{Arc, atomic};
#[cfg(not(loom))]
pub(crate) use std::sync::{Arc, atomic};

#[cfg(loom)]
use loom::sync::Mutex as Inner;
#[cfg(not(loom))]
use std::sync::Mutex as Inner;

#[cfg(loom)]
pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;
#[cfg(not(loom))]
pub(crate) type MutexGuard<'a, T> = std::sync::MutexGuard<'a, T>;

/// A mutex that ignores poisoning: every critical section in this crate leaves its data
/// consistent before it can panic (none of them calls user code), so a poisoned lock carries
/// valid state and refusing it would only turn one panic into many.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(Inner<T>);

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        Self(Inner::new(value))
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
