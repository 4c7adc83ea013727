//! The lease under which a [`PostgresStore`](super::PostgresStore) writes: the fence that no
//! append reads from a table.
//!
//! A process writes under one lease at a time, a number from the sequence
//! `ipubsub_lease_ids`. For as long as the lease lives, one dedicated connection of the
//! process (the keeper's) holds the lease's *alive* advisory lock exclusively; a stream's row
//! in `ipubsub_epochs` names the lease its epoch was acquired under. An append runs under the
//! lease in two steps:
//! - in the process: every stream of the batch must be held at its records' epoch (a map this
//!   module keeps), and is counted as under way until the append has ended;
//! - in the database, in the insert statement itself: the append takes the lease's *barrier*
//!   advisory lock shared (held to its commit), then finds the alive lock still held by its
//!   keeper. Two lock-table operations, no row read, no row locked.
//!
//! An acquisition by another process finds the stream's row naming a lease that is not its
//! own, and then either
//! - the lease is dead (its alive lock is free: the process died, or its keeper's session
//!   ended): the acquisition takes the barrier lock exclusively, which waits out every append
//!   of that lease still running; every later append of that lease finds the alive lock free
//!   and writes nothing. Or
//! - the lease is alive: the acquisition leaves a row in `ipubsub_revocations` and tries again.
//!   The keeper reads its revocations every [`POLL`], stops the stream's appends in the
//!   process, waits for those under way to end, and clears the lease from the stream's row.
//!   A holder that does not answer within [`REVOKE_WAIT`] (paused, hung) has its keeper's
//!   session ended by the acquirer (`pg_terminate_backend`): the lease is dead.
//!
//! An append whose outcome this process cannot know (the connection broke while it ran, or
//! the call was dropped half-way) could still land after a release: the process gives up the
//! whole lease at once, so that whatever lands later finds it dead. The next acquisition opens
//! a new lease.
//!
//! No node clock takes part; the revocation wait is measured by the database's clock.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use ipubsub_core::{Epoch, LogRecord, StoreError, StreamId};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnection, PgPool};

use super::super::unavailable;

/// The high 32 bits of the advisory-lock keys of leases (`ipsb`), plus the kind of lock.
const KEY_SPACE: i64 = 0x6970_7362;

/// How often a keeper reads its revocations (and so proves its session alive).
pub(super) const POLL: Duration = Duration::from_millis(50);

/// How long an acquisition lets a live holder take to release a stream before it ends the
/// holder's lease.
pub(super) const REVOKE_WAIT: Duration = Duration::from_secs(2);

/// A lease's number (below 2³², the sequence's maximum).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct LeaseId(pub(super) i64);

impl LeaseId {
    /// The key its keeper holds exclusively for as long as the lease lives.
    pub(super) fn alive_key(self) -> i64 {
        lease_lock_keys(self.0).0
    }

    /// The key every append under the lease holds shared until it commits.
    pub(super) fn barrier_key(self) -> i64 {
        lease_lock_keys(self.0).1
    }
}

/// The advisory-lock keys of lease `lease`: `(alive, barrier)`. In `pg_locks` an advisory
/// lock with a `bigint` key shows its high half as `classid` and its low half as `objid`:
/// `classid` 1768977250 is an alive lock, 1768977251 a barrier, `objid` the lease.
pub fn lease_lock_keys(lease: i64) -> (i64, i64) {
    let low = lease & 0xffff_ffff;
    ((KEY_SPACE << 32) | low, ((KEY_SPACE + 1) << 32) | low)
}

/// The `pg_locks` columns that find the session holding a lease alive.
pub(super) fn alive_lock_columns(lease: LeaseId) -> (i64, i64) {
    (KEY_SPACE, lease.0 & 0xffff_ffff)
}

/// This process's lease and what it holds under it.
pub(super) struct Leases {
    pool: PgPool,
    state: Mutex<State>,
    /// Woken whenever an append ends, for those waiting for a stream's appends to end.
    ended: tokio::sync::Notify,
    /// One lease opened at a time.
    opening: tokio::sync::Mutex<()>,
    /// This process's acquisitions and releases of one stream, one at a time (striped).
    moves: Box<[tokio::sync::Mutex<()>]>,
}

#[derive(Default)]
struct State {
    current: Option<Lease>,
    /// Appends under way, per stream (under any lease).
    under_way: HashMap<StreamId, usize>,
}

struct Lease {
    id: LeaseId,
    /// The epoch each stream is held at.
    held: HashMap<StreamId, Epoch>,
    /// Given up: nothing more is written under it, its keeper ends its session.
    lost: bool,
}

impl Leases {
    pub(super) fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            state: Mutex::default(),
            ended: tokio::sync::Notify::new(),
            opening: tokio::sync::Mutex::new(()),
            moves: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The lease this process writes under, opened when there is none (or it was lost).
    pub(super) async fn current(self: &Arc<Self>) -> Result<LeaseId, StoreError> {
        if let Some(id) = self.live() {
            return Ok(id);
        }
        let _opening = self.opening.lock().await;
        if let Some(id) = self.live() {
            return Ok(id);
        }
        let mut conn = self.pool.acquire().await.map_err(unavailable)?.detach();
        let id: i64 = sqlx::query_scalar("SELECT nextval('ipubsub_lease_ids')")
            .fetch_one(&mut conn)
            .await
            .map_err(unavailable)?;
        let id = LeaseId(id);
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(id.alive_key())
            .execute(&mut conn)
            .await
            .map_err(unavailable)?;
        self.state().current = Some(Lease {
            id,
            held: HashMap::new(),
            lost: false,
        });
        tracing::info!(lease = id.0, "PostgreSQL write lease opened");
        tokio::spawn(keep(Arc::downgrade(self), conn, id));
        Ok(id)
    }

    fn live(&self) -> Option<LeaseId> {
        self.state()
            .current
            .as_ref()
            .filter(|lease| !lease.lost)
            .map(|lease| lease.id)
    }

    /// Gives lease `id` up (if it is still the current one).
    pub(super) fn lose(&self, id: LeaseId, why: &str) {
        let mut state = self.state();
        if let Some(lease) = state.current.as_mut().filter(|l| l.id == id && !l.lost) {
            lease.lost = true;
            lease.held.clear();
            tracing::warn!(lease = id.0, why, "PostgreSQL write lease given up");
        }
    }

    /// The lock that orders this process's acquisitions and releases of `stream`.
    pub(super) fn move_lock(&self, stream: &StreamId) -> &tokio::sync::Mutex<()> {
        use std::hash::BuildHasher;
        let hash =
            std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default().hash_one(stream);
        &self.moves[(hash % self.moves.len() as u64) as usize]
    }

    /// Stops holding `stream` and waits until none of its appends is under way.
    pub(super) async fn let_go(&self, stream: &StreamId) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            {
                let mut state = self.state();
                if let Some(lease) = state.current.as_mut() {
                    lease.held.remove(stream);
                }
                if !state.under_way.contains_key(stream) {
                    return;
                }
            }
            ended.await;
        }
    }

    /// Records that `stream` is held at `epoch` under lease `id`, just acquired; an error
    /// if the lease was lost meanwhile.
    pub(super) fn hold(
        &self,
        id: LeaseId,
        stream: &StreamId,
        epoch: Epoch,
    ) -> Result<(), StoreError> {
        let mut state = self.state();
        match state.current.as_mut().filter(|l| l.id == id && !l.lost) {
            Some(lease) => {
                lease.held.insert(stream.clone(), epoch);
                Ok(())
            }
            None => Err(StoreError::Unavailable(
                "the write lease was lost during the acquisition".into(),
            )),
        }
    }

    /// Starts an append of `batch`: the streams held at their records' epochs go ahead
    /// (counted as under way until the returned guard is dropped), the others are fenced.
    /// `None` when there is no live lease: the whole batch is fenced.
    pub(super) fn begin<'a>(&'a self, batch: &[LogRecord]) -> Option<UnderWay<'a>> {
        let mut state = self.state();
        let lease = state.current.as_ref().filter(|l| !l.lost)?;
        let id = lease.id;
        // Per stream: whether every record of it carries the epoch it is held at.
        let mut verdicts: HashMap<&StreamId, bool> = HashMap::new();
        for record in batch {
            let held = lease.held.get(&record.stream) == Some(&record.seq.epoch());
            *verdicts.entry(&record.stream).or_insert(true) &= held;
        }
        let mut going = HashSet::with_capacity(verdicts.len());
        let mut fenced = Vec::new();
        // In the order of the batch.
        for record in batch {
            match verdicts.remove(&record.stream) {
                Some(true) => {
                    going.insert(record.stream.clone());
                }
                Some(false) => fenced.push(record.stream.clone()),
                None => {}
            }
        }
        for stream in &going {
            *state.under_way.entry(stream.clone()).or_default() += 1;
        }
        Some(UnderWay {
            leases: self,
            id,
            going,
            fenced,
            settled: false,
        })
    }

    /// True while lease `id` is the live one.
    fn is_live(&self, id: LeaseId) -> bool {
        self.live() == Some(id)
    }
}

/// An append under way: which of its streams go ahead and which are fenced. Dropped
/// without [`settle`](Self::settle) (a call dropped half-way, an outcome unknown), it gives
/// the lease up.
pub(super) struct UnderWay<'a> {
    leases: &'a Leases,
    /// The lease it runs under.
    pub(super) id: LeaseId,
    /// The streams that passed the in-process check.
    pub(super) going: HashSet<StreamId>,
    /// The streams that did not.
    pub(super) fenced: Vec<StreamId>,
    settled: bool,
}

impl UnderWay<'_> {
    /// The append's outcome is known (written, refused, or failed without writing).
    pub(super) fn settle(mut self) {
        self.settled = true;
    }
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.leases.lose(
                self.id,
                "an append ended without a known outcome; what it wrote may still land",
            );
        }
        let mut state = self.leases.state();
        for stream in &self.going {
            if let Some(count) = state.under_way.get_mut(stream) {
                *count -= 1;
                if *count == 0 {
                    state.under_way.remove(stream);
                }
            }
        }
        drop(state);
        self.leases.ended.notify_waiters();
    }
}

/// Whether a failed statement's outcome is unknown: the server did not answer it.
pub(super) fn unknown_outcome(e: &sqlx::Error) -> bool {
    !matches!(
        e,
        sqlx::Error::Database(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed
    )
}

/// The keeper of lease `id`: holds its alive lock on `conn` and answers its revocations,
/// until the lease is lost, replaced or the store dropped. Ending the session frees the
/// alive lock.
async fn keep(leases: Weak<Leases>, mut conn: PgConnection, id: LeaseId) {
    loop {
        tokio::time::sleep(POLL).await;
        let Some(leases) = leases.upgrade() else {
            break;
        };
        if !leases.is_live(id) {
            break;
        }
        let revoked: Result<Vec<String>, _> =
            sqlx::query_scalar("SELECT stream_id FROM ipubsub_revocations WHERE lease = $1")
                .bind(id.0)
                .fetch_all(&mut conn)
                .await;
        let outcome = match revoked {
            Ok(streams) => release_all(&leases, &mut conn, id, streams).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {}
            // The server aborted a statement of a session that lives on, and with it the
            // alive lock: the requests are still in the table for the next poll.
            Err(sqlx::Error::Database(e)) if statement_aborted(e.code().as_deref()) => {
                tracing::warn!(lease = id.0, error = %e, "a release failed; trying again");
            }
            Err(e) => {
                leases.lose(id, &format!("its keeper's session failed: {e}"));
                break;
            }
        }
    }
    conn.close().await.ok();
}

/// Whether SQLSTATE `code` aborts a statement and leaves its session alive: a deadlock, a
/// serialization failure, a lock or statement timeout.
fn statement_aborted(code: Option<&str>) -> bool {
    matches!(code, Some("40P01" | "40001" | "55P03" | "57014"))
}

async fn release_all(
    leases: &Leases,
    conn: &mut PgConnection,
    id: LeaseId,
    streams: Vec<String>,
) -> Result<(), sqlx::Error> {
    for stream in streams {
        let Ok(stream) = StreamId::new(stream) else {
            continue;
        };
        let _move = leases.move_lock(&stream).lock().await;
        // An acquisition of ours may have taken it meanwhile (and removed the request).
        let asked: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM ipubsub_revocations WHERE lease = $1 AND stream_id = $2)",
        )
        .bind(id.0)
        .bind(stream.as_str())
        .fetch_one(&mut *conn)
        .await?;
        if !asked {
            continue;
        }
        leases.let_go(&stream).await;
        if !leases.is_live(id) {
            // An append failed without a known outcome: the others wait for the lease to die.
            return Ok(());
        }
        // The epoch row first, then the request: the order an acquisition locks them in
        // (one statement with both would lock the request first, and deadlock with an
        // acquisition that holds the row and asks again).
        let mut tx = conn.begin().await?;
        sqlx::query("UPDATE ipubsub_epochs SET lease = NULL WHERE stream_id = $2 AND lease = $1")
            .bind(id.0)
            .bind(stream.as_str())
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM ipubsub_revocations WHERE lease = $1 AND stream_id = $2")
            .bind(id.0)
            .bind(stream.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::debug!(lease = id.0, stream = stream.as_str(), "stream released");
    }
    Ok(())
}
