//! Appends as MongoDB transactions: the fence, the checked insert, and what each attempt's
//! failure means (a lost write conflict runs again; anything else fails the call). The
//! module documentation of [`super`] explains why the fence is a write.

use std::time::Duration;

use ipubsub_core::{Appended, LogRecord, StoreError, StreamId};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{DateTime, Document, doc};
use mongodb::error::{TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT};
use mongodb::{ClientSession, Collection};

use super::documents::{document, epoch_of, record};
use super::{MongoStore, RESCUE_AFTER, WRITER_REFRESH, unavailable};
use crate::convert::{appended, corrupt, to_i64, wanted_epochs};

/// MongoDB's duplicate key error.
const DUPLICATE_KEY: i32 = 11000;

/// MongoDB's write conflict error: another writer changed a document this transaction wrote.
const WRITE_CONFLICT: i32 = 112;

/// The server's answer to a statement or commit of a transaction it aborted (here: one
/// whose session an acquisition killed).
const NO_SUCH_TRANSACTION: i32 = 251;

/// How many times a transaction that lost a write conflict is run again before the call
/// fails as unavailable.
const TRANSACTION_ATTEMPTS: u32 = 50;

/// This process in `writers`: its id and the sessions it has registered there.
#[derive(Debug)]
pub(super) struct Writer {
    pub(super) id: ObjectId,
    pub(super) writers: Collection<Document>,
    pub(super) registered: std::sync::Mutex<Registered>,
}

#[derive(Debug, Default)]
pub(super) struct Registered {
    /// The sessions listed in this process's `writers` document, by their lsid.
    sessions: std::collections::HashSet<String>,
    /// When `at` was last written.
    at: Option<std::time::Instant>,
}

impl Writer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registered> {
        self.registered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// What fails one attempt of a transaction: the driver (a write conflict among others,
/// known by its label) or the store's own judgement.
pub(super) enum TxError {
    Mongo(mongodb::error::Error),
    Store(StoreError),
}

impl From<mongodb::error::Error> for TxError {
    fn from(e: mongodb::error::Error) -> Self {
        Self::Mongo(e)
    }
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<TxError> for StoreError {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Mongo(e) => unavailable(e),
            TxError::Store(e) => e,
        }
    }
}

/// Commits, retrying the commit alone while its outcome is unknown (the driver's advice for
/// that label: the commit is idempotent).
async fn commit(session: &mut ClientSession) -> Result<(), TxError> {
    let mut tries = 0;
    loop {
        match session.commit_transaction().await {
            Err(e) if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT) && tries < 3 => {
                tries += 1;
            }
            result => return result.map_err(TxError::Mongo),
        }
    }
}

/// True when a transaction lost a write conflict: it wrote nothing and may run again. Other
/// transient errors (the server is unreachable) are not retried here: the log answers them,
/// and a retry loop would hold its commit worker (and the stream's watermark) meanwhile.
fn is_write_conflict(e: &mongodb::error::Error) -> bool {
    use mongodb::error::{ErrorKind, WriteFailure};
    e.contains_label(TRANSIENT_TRANSACTION_ERROR)
        && match &*e.kind {
            ErrorKind::Command(c) => c.code == WRITE_CONFLICT,
            ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == WRITE_CONFLICT,
            ErrorKind::InsertMany(failure) => failure
                .write_errors
                .iter()
                .flatten()
                .any(|w| w.code == WRITE_CONFLICT),
            _ => false,
        }
}

/// True when the server had aborted the transaction (an acquisition killed its session): it
/// wrote nothing and may run again.
fn was_aborted(e: &mongodb::error::Error) -> bool {
    e.contains_label(TRANSIENT_TRANSACTION_ERROR)
        && matches!(&*e.kind, mongodb::error::ErrorKind::Command(c) if c.code == NO_SUCH_TRANSACTION)
}

pub(super) fn is_duplicate(e: &mongodb::error::Error) -> bool {
    match &*e.kind {
        mongodb::error::ErrorKind::InsertMany(failure) => failure
            .write_errors
            .iter()
            .flatten()
            .any(|w| w.code == DUPLICATE_KEY),
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) => {
            w.code == DUPLICATE_KEY
        }
        _ => false,
    }
}

impl MongoStore {
    /// Lists `session` in this process's `writers` document (once, and `at` daily), before
    /// any transaction runs on it: what an acquisition needs to abort it.
    pub(super) async fn register(&self, session: &ClientSession) -> Result<(), StoreError> {
        let lsid = session.id();
        let key = lsid.to_string();
        let registered = |r: &Registered| {
            r.sessions.contains(&key) && r.at.is_some_and(|at| at.elapsed() < WRITER_REFRESH)
        };
        if registered(&self.writer.lock()) {
            return Ok(());
        }
        self.writer
            .writers
            .update_one(
                doc! {"_id": self.writer.id},
                doc! {"$addToSet": {"sessions": lsid.clone()}, "$set": {"at": DateTime::now()}},
            )
            .upsert(true)
            .await
            .map_err(unavailable)?;
        let mut known = self.writer.lock();
        known.sessions.insert(key);
        known.at = Some(std::time::Instant::now());
        Ok(())
    }

    /// Aborts the open transactions of `holder` (another process) by killing the sessions it
    /// registered. Failures are logged: the acquisition then waits for the server to abort
    /// them itself.
    pub(super) async fn abort_transactions_of(&self, stream: &StreamId, holder: ObjectId) {
        let found = self.writer.writers.find_one(doc! {"_id": holder}).await;
        let sessions = match found {
            Ok(Some(found)) => found.get_array("sessions").cloned().unwrap_or_default(),
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!(%stream, error = %e, "cannot read the sessions of the stream's holder");
                return;
            }
        };
        tracing::warn!(%stream, %holder, sessions = sessions.len(), waited = ?RESCUE_AFTER, "a takeover waits for the stream's epoch document: aborting the transactions of the process that held it (killed inside a commit, or stuck)");
        if sessions.is_empty() {
            return;
        }
        let killed = self
            .client
            .database("admin")
            .run_command(doc! {"killSessions": sessions})
            .await;
        if let Err(e) = killed {
            tracing::warn!(%stream, %holder, error = %e, "killSessions failed: the takeover waits for the server to abort the transactions");
        }
    }

    /// Runs an append (comparing each record with its position first if `checked`) in a
    /// transaction until it commits, running it again (after a short, growing pause) when it
    /// lost a write conflict.
    pub(super) async fn append_transaction(
        &self,
        batch: &[LogRecord],
        checked: bool,
    ) -> Result<Appended, StoreError> {
        let mut session = self.client.start_session().await.map_err(unavailable)?;
        self.register(&session).await?;
        for round in 0..TRANSACTION_ATTEMPTS {
            session.start_transaction().await.map_err(unavailable)?;
            let attempt = self.append_in(&mut session, batch, checked).await;
            let outcome = match attempt {
                Ok(value) => commit(&mut session).await.map(|()| value),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(value) => return Ok(value),
                Err(TxError::Mongo(e)) if is_write_conflict(&e) || was_aborted(&e) => {
                    session.abort_transaction().await.ok();
                    let pause = Duration::from_micros(200 * u64::from(round.min(20)));
                    tokio::time::sleep(pause).await;
                }
                Err(e) => {
                    session.abort_transaction().await.ok();
                    return Err(e.into());
                }
            }
        }
        Err(StoreError::Unavailable(
            format!("{TRANSACTION_ATTEMPTS} transactions in a row lost a write conflict").into(),
        ))
    }

    /// The fence inside a transaction: the streams of `batch` whose epoch document holds
    /// their records' epoch (as of the transaction's snapshot; [`touch`](Self::touch) makes
    /// that binding).
    async fn fence(
        &self,
        session: &mut ClientSession,
        batch: &[LogRecord],
    ) -> Result<Vec<String>, TxError> {
        let mut streams: Vec<&str> = batch.iter().map(|r| r.stream.as_str()).collect();
        streams.sort_unstable();
        streams.dedup();
        let mut cursor = self
            .epochs
            .find(doc! {"_id": {"$in": &streams}})
            .session(&mut *session)
            .await?;
        let wanted = wanted_epochs(batch);
        let mut passed = Vec::new();
        while let Some(found) = cursor.next(&mut *session).await {
            let found = found?;
            let stream = found.get_str("_id").map_err(corrupt)?;
            if wanted.contains(&(stream.as_bytes(), epoch_of(&found)?)) {
                passed.push(stream.to_owned());
            }
        }
        Ok(passed)
    }

    /// Writes the epoch documents of `passed` once, so that an acquisition overlapping this
    /// transaction conflicts with it. Done last, just before the commit: from this write to
    /// the commit the documents are locked, and a writer that dies in that window holds them
    /// until the server aborts its transaction (`transactionLifetimeLimitSeconds`, 60 s by
    /// default), which is how long a takeover of those streams then waits.
    pub(super) async fn touch(
        &self,
        session: &mut ClientSession,
        passed: &[String],
    ) -> Result<(), TxError> {
        if !passed.is_empty() {
            self.epochs
                .update_many(
                    doc! {"_id": {"$in": passed}},
                    doc! {"$inc": {"writes": 1_i64}},
                )
                .session(&mut *session)
                .await?;
        }
        Ok(())
    }

    /// One attempt at an append; `checked` compares each record with its position first.
    async fn append_in(
        &self,
        session: &mut ClientSession,
        batch: &[LogRecord],
        checked: bool,
    ) -> Result<Appended, TxError> {
        let passed = self.fence(session, batch).await?;
        let outcome = appended(batch, &passed);
        let mut documents = Vec::new();
        for record in batch.iter().filter(|r| !outcome.is_fenced(&r.stream)) {
            if checked {
                let found = self
                    .messages
                    .find_one(
                        doc! {"streamId": record.stream.as_str(), "seq": to_i64(record.seq.get())?},
                    )
                    .session(&mut *session)
                    .await?;
                match found
                    .map(|d| self::record(&record.stream, &d))
                    .transpose()?
                {
                    Some(stored) if stored == *record => continue,
                    Some(_) => {
                        return Err(TxError::Store(StoreError::Conflict {
                            stream: record.stream.clone(),
                            seq: record.seq,
                        }));
                    }
                    None => {}
                }
            }
            documents.push(document(record)?);
        }
        if !documents.is_empty() {
            self.messages
                .insert_many(documents)
                .ordered(true)
                .session(&mut *session)
                .await?;
        }
        self.touch(session, &passed).await?;
        Ok(outcome)
    }
}
