//! [`MongoStore`]: the persistent log in MongoDB, or a server speaking its wire protocol,
//! with the official driver.
//!
//! # Layout
//! One collection, `messages`, one document per message:
//! `{streamId, seq, messageId, acceptedAt, expiresAtMicros, expireAt, payload}`, with a unique
//! index on `(streamId, seq)` (a read of one stream is one range of it) and a TTL index on
//! `expireAt` (a BSON date, rounded up to the millisecond so that the server's TTL monitor
//! never deletes a message early). Reads filter on `expiresAtMicros`, to the microsecond, so a
//! message is never returned after its TTL whatever the monitor's lag (it runs once a
//! minute); the purge deletes in bounded batches over the `expireAt` index as well, so disk use
//! follows the live data on servers whose TTL monitor is slow or missing.
//!
//! # Appends
//! A group commit is one ordered `insert_many`. Without a replica set there are no
//! multi-document transactions, so a batch that fails half-way may leave a prefix written; the
//! log treats every failed append as ambiguous already (its senders get a 503 and the
//! positions are never reused). Records at or below the highest position this store has seen
//! for their stream are compared with what is stored before anything is written, so a
//! different message there is a [`StoreError::Conflict`] and writes nothing; a retried batch
//! that finds its own prefix (duplicate key) inserts only what is missing.

use std::time::Duration;

use async_trait::async_trait;
use ipubsub_core::{
    LogRecord, Message, MessageId, MessageStore, Seq, StoreError, StreamId, Timestamp,
};
use mongodb::bson::spec::BinarySubtype;
use mongodb::bson::{Binary, Bson, DateTime, Document, doc};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, IndexModel};

use crate::convert::{corrupt, to_i64, to_u64};
use crate::high_water::HighWater;

/// MongoDB's duplicate key error.
const DUPLICATE_KEY: i32 = 11000;

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
    messages: Collection<Document>,
    /// Appends above a stream's known high-water mark skip the conflict check.
    high: std::sync::Arc<HighWater>,
}

fn unavailable(e: mongodb::error::Error) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

fn is_duplicate(e: &mongodb::error::Error) -> bool {
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

/// The TTL index's date: `expires_at` rounded up to the millisecond.
fn expire_at(expires_at: Timestamp) -> DateTime {
    let millis = expires_at.as_micros().div_ceil(1_000);
    DateTime::from_millis(i64::try_from(millis).unwrap_or(i64::MAX))
}

fn document(record: &LogRecord) -> Result<Document, StoreError> {
    Ok(doc! {
        "streamId": record.stream.as_str(),
        "seq": to_i64(record.seq.get())?,
        "messageId": record.message.id().as_str(),
        "acceptedAt": to_i64(record.message.timestamp().as_micros())?,
        "expiresAtMicros": to_i64(record.expires_at.as_micros())?,
        "expireAt": expire_at(record.expires_at),
        "payload": Binary { subtype: BinarySubtype::Generic, bytes: record.message.payload().to_vec() },
    })
}

fn record(stream: &StreamId, doc: &Document) -> Result<LogRecord, StoreError> {
    let int = |key: &str| doc.get_i64(key).map_err(corrupt).and_then(to_u64);
    let id = doc.get_str("messageId").map_err(corrupt)?;
    let payload = doc.get_binary_generic("payload").map_err(corrupt)?;
    Ok(LogRecord {
        stream: stream.clone(),
        seq: Seq::new(int("seq")?),
        message: Message::new(
            MessageId::new(id).map_err(corrupt)?,
            bytes::Bytes::copy_from_slice(payload),
            Timestamp::from_micros(int("acceptedAt")?),
        ),
        expires_at: Timestamp::from_micros(int("expiresAtMicros")?),
    })
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
        Ok(Self {
            messages,
            high: std::sync::Arc::default(),
        })
    }

    async fn stored(&self, record: &LogRecord) -> Result<Option<LogRecord>, StoreError> {
        let found = self
            .messages
            .find_one(doc! {"streamId": record.stream.as_str(), "seq": to_i64(record.seq.get())?})
            .await
            .map_err(unavailable)?;
        found.map(|d| self::record(&record.stream, &d)).transpose()
    }

    /// Compares each record with its position and inserts the missing ones.
    async fn append_checked(&self, batch: &[LogRecord]) -> Result<(), StoreError> {
        let mut missing = Vec::new();
        for record in batch {
            match self.stored(record).await? {
                Some(stored) if stored == *record => {}
                Some(_) => {
                    return Err(StoreError::Conflict {
                        stream: record.stream.clone(),
                        seq: record.seq,
                    });
                }
                None => missing.push(document(record)?),
            }
        }
        if !missing.is_empty() {
            self.messages
                .insert_many(missing)
                .ordered(true)
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }
}

#[async_trait]
impl MessageStore for MongoStore {
    async fn append(&self, batch: &[LogRecord]) -> Result<(), StoreError> {
        if batch.is_empty() {
            return Ok(());
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
        let documents = batch.iter().map(document).collect::<Result<Vec<_>, _>>()?;
        match self.messages.insert_many(documents).ordered(true).await {
            Ok(_) => {}
            Err(e) if is_duplicate(&e) => self.append_checked(batch).await?,
            Err(e) => return Err(unavailable(e)),
        }
        for record in batch {
            self.high.raise(&record.stream, record.seq);
        }
        Ok(())
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

    async fn last_seq(&self, stream: &StreamId) -> Result<Seq, StoreError> {
        let mut cursor = self
            .messages
            .find(doc! {"streamId": stream.as_str()})
            .sort(doc! {"seq": -1})
            .limit(1)
            .projection(doc! {"seq": 1, "_id": 0})
            .await
            .map_err(unavailable)?;
        if cursor.advance().await.map_err(unavailable)? {
            let doc = cursor.deserialize_current().map_err(unavailable)?;
            return Ok(Seq::new(to_u64(doc.get_i64("seq").map_err(corrupt)?)?));
        }
        Ok(Seq::ZERO)
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
