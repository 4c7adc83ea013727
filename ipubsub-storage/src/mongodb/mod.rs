//! [`MongoStore`]: the persistent log in MongoDB, or a server speaking its wire protocol,
//! with the official driver.
//!
//! # Layout
//! One collection, `messages`, one document per message:
//! `{streamId, seq, messageId, acceptedAt, expiresAtMicros, expireAt, payload}`, with a unique
//! index on `(streamId, seq)` (a read of one stream is one range of it), an index on
//! `(streamId, messageId, seq)` for `find_message`, and a TTL index on
//! `expireAt` (a BSON date, rounded up to the millisecond so that the server's TTL monitor
//! never deletes a message early). Reads filter on `expiresAtMicros`, to the microsecond, so a
//! message is never returned after its TTL whatever the monitor's lag (it runs once a
//! minute); the purge deletes in bounded batches over the `expireAt` index as well, so disk use
//! follows the live data on servers whose TTL monitor is slow or missing.
//!
//! A second collection, `epochs`, holds one document per acquired stream:
//! `{_id: streamId, epoch, writes, holder}`, never purged; `holder` names the process that
//! acquired it last. A third, `writers`, has one document per process:
//! `{_id: holder, sessions: [lsid], at}`, the server sessions its transactions run on
//! (dropped by a TTL index a week after `at`, which a live process refreshes daily).
//!
//! # The fence and appends
//! MongoDB has no shared locks, and a transaction's reads do not conflict with another's
//! writes (snapshot isolation); only two writes to one document do. So the fence is a write:
//! a group commit is one multi-document transaction that reads its streams' epoch documents,
//! increments `writes` on those that hold its records' epochs (one `update_many`), and inserts
//! the records of those streams (one ordered `insert_many`). An acquisition first moves the
//! epoch with a plain (non-transactional) `findOneAndUpdate`: MongoDB makes such a write wait
//! for the transactions that already wrote the document, and aborts with a write conflict
//! every transaction that writes it afterwards (their retry finds the new epoch). It then
//! reads the last position, which holds everything those appends committed. A transaction
//! for the acquisition itself would lose every write conflict to a busy writer, and starve.
//!
//! A process killed between a transaction's write of the epoch documents and its commit
//! leaves the transaction open on the server, which holds those documents until it aborts it
//! (`transactionLifetimeLimitSeconds`, 60 s by default). So an acquisition that has waited
//! [`RESCUE_AFTER`] for the epoch document kills the sessions of the stream's holder
//! (`killSessions`, from `writers`): its open transactions abort, and the acquisition goes
//! through. A holder that was only slow has its transactions aborted with a transient error
//! and runs them again. Transactions need a replica set (a one-member set will do) or a server
//! that offers them standalone, like the SecantusDB the tests run on; a plain standalone
//! `mongod` refuses them, and every append fails with its error.
//!
//! Records at or below the highest position this store has seen for their stream are
//! compared with what is stored before anything is written, so a different message there is
//! a [`StoreError::Conflict`] and writes nothing; a retried batch that finds its own records
//! (duplicate key) runs again comparing each record and inserts only what is missing.
//!
//! # Code
//! This module connects and implements [`MessageStore`]; `documents` lays a record out as a
//! `messages` document and reads it back; `transaction` runs an append as a transaction and
//! tells a lost write conflict (run it again) from a failure.

use std::time::Duration;

use async_trait::async_trait;
use ipubsub_core::{
    Appended, Epoch, LogRecord, MessageId, MessageStore, Seq, StoreError, StreamId, Tenure,
    Timestamp,
};
use mongodb::bson::oid::ObjectId;
use mongodb::bson::{Bson, DateTime, Document, doc};
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, IndexModel};

use crate::convert::{corrupt, to_i64, to_u64};
use crate::high_water::HighWater;

mod documents;
mod transaction;

use documents::{epoch_of, record};
use transaction::{Writer, is_duplicate};

/// How long an acquisition waits for a stream's epoch document before it aborts the
/// transactions of the process that held the stream. A live writer holds the document from
/// the write of its epoch documents to its commit: milliseconds.
pub const RESCUE_AFTER: Duration = Duration::from_secs(2);

/// How often a process refreshes its `writers` document's `at`, and how long after it the
/// document is dropped.
const WRITER_REFRESH: Duration = Duration::from_secs(24 * 3600);
const WRITER_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// How to reach a MongoDB server and where the log lives in it.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct MongoConfig {
    /// `mongodb://user:password@host:port/?options`.
    pub url: String,
    /// The database holding the `messages` collection.
    pub database: String,
    /// Most connections the driver opens.
    pub pool_size: u32,
    /// How long an operation waits for a usable server before it fails.
    pub connect_timeout: Duration,
}

impl MongoConfig {
    /// `url`, database `ipubsub`, 16 connections, 5 s.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            database: "ipubsub".into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl std::fmt::Debug for MongoConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoConfig")
            .field("url", &crate::redacted_url(&self.url))
            .field("database", &self.database)
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// Why a MongoDB store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The URL is not one the driver understands.
    #[error("bad MongoDB URL {url}: {source}")]
    Url {
        /// The URL, password hidden.
        url: String,
        /// What the driver said.
        #[source]
        source: mongodb::error::Error,
    },
    /// The server did not answer, or refused the credentials.
    #[error("cannot connect to MongoDB at {url}: {source}")]
    Connect {
        /// The URL, password hidden.
        url: String,
        /// What the driver said.
        #[source]
        source: mongodb::error::Error,
    },
    /// The indexes could not be created.
    #[error("cannot set up the MongoDB indexes: {0}")]
    Indexes(#[source] mongodb::error::Error),
}

/// The persistent log in MongoDB. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MongoStore {
    client: Client,
    messages: Collection<Document>,
    epochs: Collection<Document>,
    /// Appends above a stream's known high-water mark skip the conflict check.
    high: std::sync::Arc<HighWater>,
    /// This process as the holder of the streams it acquires.
    writer: std::sync::Arc<Writer>,
}

fn unavailable(e: mongodb::error::Error) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

impl MongoStore {
    /// Connects, checks that the server answers, and creates the indexes if missing.
    pub async fn connect(config: &MongoConfig) -> Result<Self, OpenError> {
        let url = crate::redacted_url(&config.url);
        let mut options =
            ClientOptions::parse(&config.url)
                .await
                .map_err(|source| OpenError::Url {
                    url: url.clone(),
                    source,
                })?;
        options.max_pool_size = Some(config.pool_size.max(1));
        options.server_selection_timeout = Some(config.connect_timeout);
        options.connect_timeout = Some(config.connect_timeout);
        options.app_name = Some("ipubsub".into());
        let client = Client::with_options(options).map_err(|source| OpenError::Url {
            url: url.clone(),
            source,
        })?;
        let database = client.database(&config.database);
        database
            .run_command(doc! {"ping": 1})
            .await
            .map_err(|source| OpenError::Connect { url, source })?;
        let messages = database.collection::<Document>("messages");
        messages
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"streamId": 1, "seq": 1})
                    .options(
                        IndexOptions::builder()
                            .unique(true)
                            .name("streamId_seq".to_owned())
                            .build(),
                    )
                    .build(),
            )
            .await
            .map_err(OpenError::Indexes)?;
        messages
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"streamId": 1, "messageId": 1, "seq": 1})
                    .options(
                        IndexOptions::builder()
                            .name("streamId_messageId_seq".to_owned())
                            .build(),
                    )
                    .build(),
            )
            .await
            .map_err(OpenError::Indexes)?;
        messages
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"expireAt": 1})
                    .options(
                        IndexOptions::builder()
                            .expire_after(Duration::ZERO)
                            .name("expireAt_ttl".to_owned())
                            .build(),
                    )
                    .build(),
            )
            .await
            .map_err(OpenError::Indexes)?;
        let epochs = database.collection::<Document>("epochs");
        let writers = database.collection::<Document>("writers");
        writers
            .create_index(
                IndexModel::builder()
                    .keys(doc! {"at": 1})
                    .options(
                        IndexOptions::builder()
                            .expire_after(WRITER_EXPIRY)
                            .name("at_ttl".to_owned())
                            .build(),
                    )
                    .build(),
            )
            .await
            .map_err(OpenError::Indexes)?;
        Ok(Self {
            client,
            messages,
            epochs,
            high: std::sync::Arc::default(),
            writer: std::sync::Arc::new(Writer {
                id: ObjectId::new(),
                writers,
                registered: std::sync::Mutex::default(),
            }),
        })
    }

    /// The record stored at `record`'s position, if any (outside any transaction).
    async fn stored(&self, record: &LogRecord) -> Result<Option<LogRecord>, StoreError> {
        let found = self
            .messages
            .find_one(doc! {"streamId": record.stream.as_str(), "seq": to_i64(record.seq.get())?})
            .await
            .map_err(unavailable)?;
        found.map(|d| self::record(&record.stream, &d)).transpose()
    }
}

impl MongoStore {
    /// The highest position among the messages `filter` matches, if any.
    async fn highest_seq(&self, filter: Document) -> Result<Option<Seq>, StoreError> {
        let mut cursor = self
            .messages
            .find(filter)
            .sort(doc! {"seq": -1})
            .limit(1)
            .projection(doc! {"seq": 1, "_id": 0})
            .await
            .map_err(unavailable)?;
        if !cursor.advance().await.map_err(unavailable)? {
            return Ok(None);
        }
        let doc = cursor.deserialize_current().map_err(unavailable)?;
        Ok(Some(Seq::new(to_u64(
            doc.get_i64("seq").map_err(corrupt)?,
        )?)))
    }
}

#[async_trait]
impl MessageStore for MongoStore {
    async fn acquire(&self, stream: &StreamId) -> Result<Tenure, StoreError> {
        let id = stream.as_str();
        let exhausted = || StoreError::EpochsExhausted {
            stream: stream.clone(),
        };
        loop {
            let holder = self
                .epochs
                .find_one(doc! {"_id": id})
                .projection(doc! {"holder": 1})
                .await
                .map_err(unavailable)?
                .and_then(|found| found.get_object_id("holder").ok())
                .filter(|holder| *holder != self.writer.id);
            // The fence: from here on no transaction of an older epoch commits a write.
            let moving = self
                .epochs
                .find_one_and_update(
                    doc! {"_id": id},
                    doc! {"$inc": {"epoch": 1_i64}, "$set": {"holder": self.writer.id}},
                )
                .upsert(true)
                .return_document(ReturnDocument::After)
                .into_future();
            let mut moving = std::pin::pin!(moving);
            let moved = match tokio::time::timeout(RESCUE_AFTER, moving.as_mut()).await {
                Ok(moved) => moved,
                Err(_waited) => {
                    if let Some(holder) = holder {
                        self.abort_transactions_of(stream, holder).await;
                    }
                    moving.await
                }
            };
            let moved = moved
                .map_err(unavailable)?
                .ok_or_else(|| StoreError::Corrupt("the upserted epoch is missing".into()))?;
            let epoch = epoch_of(&moved).map_err(|_| exhausted())?;
            let last = self.last_seq(stream).await?;
            if epoch > last.epoch() {
                return Ok(Tenure { epoch, last });
            }
            // A log written before epochs were kept: jump above its positions, unless another
            // acquisition moved the epoch meanwhile (then start over).
            let above = Epoch::after(epoch, last).ok_or_else(exhausted)?;
            let jumped = self
                .epochs
                .update_one(
                    doc! {"_id": id, "epoch": i64::from(epoch.get())},
                    doc! {"$set": {"epoch": i64::from(above.get())}},
                )
                .await
                .map_err(unavailable)?;
            if jumped.matched_count == 1 {
                return Ok(Tenure { epoch: above, last });
            }
        }
    }

    async fn append(&self, batch: &[LogRecord]) -> Result<Appended, StoreError> {
        if batch.is_empty() {
            return Ok(Appended::all());
        }
        // Check first, write after: a conflict with what is known to be stored writes nothing.
        for record in batch {
            let known = match self.high.get(&record.stream) {
                Some(high) => high,
                None => {
                    let high = self.last_seq(&record.stream).await?;
                    self.high.raise(&record.stream, high);
                    high
                }
            };
            if record.seq <= known
                && let Some(stored) = self.stored(record).await?
                && stored != *record
            {
                return Err(StoreError::Conflict {
                    stream: record.stream.clone(),
                    seq: record.seq,
                });
            }
        }
        let outcome = match self.append_transaction(batch, false).await {
            Err(StoreError::Unavailable(e))
                if e.downcast_ref::<mongodb::error::Error>()
                    .is_some_and(is_duplicate) =>
            {
                self.append_transaction(batch, true).await?
            }
            other => other?,
        };
        for record in batch.iter().filter(|r| !outcome.is_fenced(&r.stream)) {
            self.high.raise(&record.stream, record.seq);
        }
        Ok(outcome)
    }

    async fn read_after(
        &self,
        stream: &StreamId,
        after: Seq,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let Ok(after) = i64::try_from(after.get()) else {
            return Ok(Vec::new());
        };
        let mut cursor = self
            .messages
            .find(doc! {
                "streamId": stream.as_str(),
                "seq": {"$gt": after},
                "expiresAtMicros": {"$gt": to_i64(now.as_micros())?},
            })
            .sort(doc! {"seq": 1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .await
            .map_err(unavailable)?;
        let mut out = Vec::new();
        while cursor.advance().await.map_err(unavailable)? {
            let doc = cursor.deserialize_current().map_err(unavailable)?;
            out.push(record(stream, &doc)?);
        }
        Ok(out)
    }

    async fn find_message(
        &self,
        stream: &StreamId,
        id: &MessageId,
        since: Timestamp,
        now: Timestamp,
    ) -> Result<Option<Seq>, StoreError> {
        self.highest_seq(doc! {
            "streamId": stream.as_str(),
            "messageId": id.as_str(),
            "acceptedAt": {"$gte": to_i64(since.as_micros())?},
            "expiresAtMicros": {"$gt": to_i64(now.as_micros())?},
        })
        .await
    }

    async fn last_seq(&self, stream: &StreamId) -> Result<Seq, StoreError> {
        let last = self.highest_seq(doc! {"streamId": stream.as_str()}).await?;
        Ok(last.unwrap_or(Seq::ZERO))
    }

    async fn server_time(&self) -> Result<Option<Timestamp>, StoreError> {
        // `hello` answers the server's `localTime`, to the millisecond.
        let hello = self
            .client
            .database("admin")
            .run_command(doc! {"hello": 1})
            .await
            .map_err(unavailable)?;
        let at = hello.get_datetime("localTime").map_err(corrupt)?;
        let micros = u64::try_from(at.timestamp_millis()).map_err(corrupt)? * 1000;
        Ok(Some(Timestamp::from_micros(micros)))
    }

    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
        // Over the TTL index: the first `limit` expired ids, then one delete of exactly those.
        let cutoff =
            DateTime::from_millis(i64::try_from(now.as_micros() / 1_000).unwrap_or(i64::MAX));
        let mut cursor = self
            .messages
            .find(doc! {"expireAt": {"$lte": cutoff}})
            .sort(doc! {"expireAt": 1})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .projection(doc! {"_id": 1})
            .await
            .map_err(unavailable)?;
        let mut ids: Vec<Bson> = Vec::new();
        while cursor.advance().await.map_err(unavailable)? {
            let doc = cursor.deserialize_current().map_err(unavailable)?;
            if let Some(id) = doc.get("_id") {
                ids.push(id.clone());
            }
        }
        if ids.is_empty() {
            return Ok(0);
        }
        let deleted = self
            .messages
            .delete_many(doc! {"_id": {"$in": ids}})
            .await
            .map_err(unavailable)?
            .deleted_count;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store on the test server `scripts/services.sh` starts (or `IPUBSUB_TEST_MONGODB_URL`).
    async fn store() -> MongoStore {
        let url = std::env::var("IPUBSUB_TEST_MONGODB_URL")
            .unwrap_or_else(|_| "mongodb://127.0.0.1:27017/".into());
        let mut config = MongoConfig::new(url);
        config.database = "ipubsub_rescue".into();
        MongoStore::connect(&config)
            .await
            .expect("MongoDB is not reachable: run scripts/services.sh")
    }

    /// A process killed between its transaction's write of the epoch documents and its commit
    /// leaves the transaction open: here one held open on purpose, by the holder's own code
    /// path, and never committed. The next acquisition aborts it instead of waiting out the
    /// server's 60 s transaction lifetime, and the abandoned transaction can no longer commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_takeover_aborts_the_open_transaction_of_a_dead_holder() {
        let (dead, next) = (store().await, store().await);
        let stream = StreamId::new(format!("rescue-{}", ObjectId::new())).expect("stream id");
        dead.acquire(&stream).await.expect("first acquisition");
        let mut session = dead.client.start_session().await.expect("session");
        dead.register(&session).await.expect("register");
        session.start_transaction().await.expect("transaction");
        if dead
            .touch(&mut session, &[stream.as_str().to_owned()])
            .await
            .is_err()
        {
            panic!("the epoch document could not be written in the transaction");
        }

        let started = std::time::Instant::now();
        let taken = tokio::time::timeout(Duration::from_secs(20), next.acquire(&stream)).await;
        let waited = started.elapsed();
        assert!(
            matches!(taken, Ok(Ok(_))),
            "the takeover did not go through within 20 s ({taken:?})"
        );
        assert!(
            waited >= RESCUE_AFTER,
            "the takeover did not wait for the open transaction ({waited:?}): the test holds nothing"
        );
        assert!(
            session.commit_transaction().await.is_err(),
            "the dead holder's transaction still committed after the takeover"
        );
    }
}
