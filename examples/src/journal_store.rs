//! [`JournalStore`]: a small [`MessageStore`] in one append-only file, as an example of a
//! user-written backend. It is checked by the same conformance suite as the built-in stores
//! (`tests/journal_store.rs`) and plugged into a [`Log`](ipubsub_core::Log) by
//! `custom_store.rs`.
//!
//! Every append writes its batch as JSON lines followed by a commit line, in one `write`; on
//! open the journal is replayed and a batch without its commit line (cut by a crash) is
//! ignored, which makes batches atomic. An acquisition writes one epoch line. The index and
//! the epochs live in memory; one lock makes each call atomic, which is all the fence needs in
//! a store that only one process opens. A purge rewrites the file without the expired
//! records (keeping the epochs): simple, and fine for a store this size.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use ipubsub_core::{
    Appended, Epoch, LogRecord, Message, MessageId, MessageStore, Seq, StoreError, StreamId,
    Tenure, Timestamp,
};
use serde::{Deserialize, Serialize};

/// One line of the journal.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Line {
    Record {
        stream: String,
        seq: u64,
        id: String,
        payload: String,
        timestamp: u64,
        expires_at: u64,
    },
    Commit {
        commit: usize,
    },
    Epoch {
        stream: String,
        epoch: u32,
    },
}

/// A [`MessageStore`] in one append-only journal file.
#[derive(Debug)]
pub struct JournalStore {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    file: File,
    streams: BTreeMap<StreamId, BTreeMap<Seq, LogRecord>>,
    epochs: BTreeMap<StreamId, Epoch>,
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Unavailable(Box::new(e))
}

fn corrupt(e: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Corrupt(Box::new(e))
}

fn to_line(r: &LogRecord) -> Result<Line, StoreError> {
    Ok(Line::Record {
        stream: r.stream.to_string(),
        seq: r.seq.get(),
        id: r.message.id().to_string(),
        payload: String::from_utf8(r.message.payload().to_vec()).map_err(corrupt)?,
        timestamp: r.message.timestamp().as_micros(),
        expires_at: r.expires_at.as_micros(),
    })
}

fn from_line(line: Line) -> Result<Option<LogRecord>, StoreError> {
    let Line::Record {
        stream,
        seq,
        id,
        payload,
        timestamp,
        expires_at,
    } = line
    else {
        return Ok(None);
    };
    Ok(Some(LogRecord {
        stream: StreamId::new(stream).map_err(corrupt)?,
        seq: Seq::new(seq),
        message: Message::new(
            MessageId::new(id).map_err(corrupt)?,
            Bytes::from(payload),
            Timestamp::from_micros(timestamp),
        ),
        expires_at: Timestamp::from_micros(expires_at),
    }))
}

impl JournalStore {
    /// Opens the journal at `path`, creating it if missing, and replays it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut streams: BTreeMap<StreamId, BTreeMap<Seq, LogRecord>> = BTreeMap::new();
        let mut epochs = BTreeMap::new();
        if path.exists() {
            let mut batch = Vec::new();
            for line in BufReader::new(File::open(&path).map_err(io)?).lines() {
                let Ok(line) = serde_json::from_str::<Line>(&line.map_err(io)?) else {
                    break; // a torn last line: the batch it belongs to never committed
                };
                match line {
                    Line::Commit { .. } => {
                        for record in batch.drain(..) {
                            let record: LogRecord = record;
                            streams
                                .entry(record.stream.clone())
                                .or_default()
                                .insert(record.seq, record);
                        }
                    }
                    Line::Epoch { stream, epoch } => {
                        let epoch = Epoch::new(u64::from(epoch))
                            .ok_or_else(|| StoreError::Corrupt("epoch out of range".into()))?;
                        epochs.insert(StreamId::new(stream).map_err(corrupt)?, epoch);
                    }
                    record => batch.extend(from_line(record)?),
                }
            }
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        Ok(Self {
            path,
            state: Mutex::new(State {
                file,
                streams,
                epochs,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn encode(lines: &[Line]) -> Result<Vec<u8>, StoreError> {
        let mut out = Vec::new();
        for line in lines {
            serde_json::to_writer(&mut out, line).map_err(corrupt)?;
            out.push(b'\n');
        }
        Ok(out)
    }
}

#[async_trait]
impl MessageStore for JournalStore {
    async fn acquire(&self, stream: &StreamId) -> Result<Tenure, StoreError> {
        let mut state = self.lock();
        let last = last_of(&state, stream);
        let current = state.epochs.get(stream).copied().unwrap_or_default();
        let epoch = Epoch::after(current, last).ok_or_else(|| StoreError::EpochsExhausted {
            stream: stream.clone(),
        })?;
        let line = Line::Epoch {
            stream: stream.to_string(),
            epoch: epoch.get(),
        };
        state.file.write_all(&Self::encode(&[line])?).map_err(io)?;
        state.epochs.insert(stream.clone(), epoch);
        Ok(Tenure { epoch, last })
    }

    async fn append(&self, batch: &[LogRecord]) -> Result<Appended, StoreError> {
        let mut state = self.lock();
        let mut fenced = Vec::new();
        for record in batch {
            if state.epochs.get(&record.stream) != Some(&record.seq.epoch())
                && !fenced.contains(&record.stream)
            {
                fenced.push(record.stream.clone());
            }
        }
        let mut new = Vec::new();
        let mut seen = BTreeSet::new();
        for record in batch.iter().filter(|r| !fenced.contains(&r.stream)) {
            match state
                .streams
                .get(&record.stream)
                .and_then(|log| log.get(&record.seq))
            {
                Some(existing) if existing == record => {}
                Some(_) => {
                    return Err(StoreError::Conflict {
                        stream: record.stream.clone(),
                        seq: record.seq,
                    });
                }
                None if seen.insert((record.stream.clone(), record.seq)) => new.push(record),
                None => {}
            }
        }
        if new.is_empty() {
            return Ok(Appended::fenced(fenced));
        }
        let mut lines = new
            .iter()
            .map(|r| to_line(r))
            .collect::<Result<Vec<_>, _>>()?;
        lines.push(Line::Commit { commit: new.len() });
        // One write: the OS has the whole batch, commit line included, or a torn tail that
        // replay ignores. That survives the process being killed.
        let bytes = Self::encode(&lines)?;
        state.file.write_all(&bytes).map_err(io)?;
        for record in new {
            state
                .streams
                .entry(record.stream.clone())
                .or_default()
                .insert(record.seq, record.clone());
        }
        Ok(Appended::fenced(fenced))
    }

    async fn read_after(
        &self,
        stream: &StreamId,
        after: Seq,
        limit: usize,
        now: Timestamp,
    ) -> Result<Vec<LogRecord>, StoreError> {
        let state = self.lock();
        let Some(log) = state.streams.get(stream) else {
            return Ok(Vec::new());
        };
        Ok(log
            .range(after.next()..)
            .map(|(_, r)| r)
            .filter(|r| !r.is_expired(now))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn last_seq(&self, stream: &StreamId) -> Result<Seq, StoreError> {
        Ok(last_of(&self.lock(), stream))
    }

    async fn purge_expired(&self, now: Timestamp, limit: usize) -> Result<usize, StoreError> {
        let mut state = self.lock();
        let expired: Vec<(StreamId, Seq)> = state
            .streams
            .values()
            .flat_map(|log| log.values())
            .filter(|r| r.is_expired(now))
            .take(limit)
            .map(|r| (r.stream.clone(), r.seq))
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        for (stream, seq) in &expired {
            if let Some(log) = state.streams.get_mut(stream) {
                log.remove(seq);
                if log.is_empty() {
                    state.streams.remove(stream);
                }
            }
        }
        // Rewrite the journal with what is left, then swap it in atomically.
        let mut lines = Vec::new();
        for (stream, epoch) in &state.epochs {
            lines.push(Line::Epoch {
                stream: stream.to_string(),
                epoch: epoch.get(),
            });
        }
        for record in state.streams.values().flat_map(|log| log.values()) {
            lines.push(to_line(record)?);
        }
        lines.push(Line::Commit {
            commit: lines.len(),
        });
        let tmp = self.path.with_extension("compact");
        std::fs::write(&tmp, Self::encode(&lines)?).map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        state.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(io)?;
        Ok(expired.len())
    }
}

/// The highest position stored for `stream`.
fn last_of(state: &State, stream: &StreamId) -> Seq {
    state
        .streams
        .get(stream)
        .and_then(|log| log.keys().next_back().copied())
        .unwrap_or(Seq::ZERO)
}
