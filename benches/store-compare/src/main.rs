//! Compares the embedded-store candidates on ipubsub's log workload, in one run:
//! group-committed appends (64 records of 100 bytes per batch, each with an expiry-index
//! entry, over 1,000 streams) and range reads of one stream in pages of 100.
//!
//! `cargo run --release --manifest-path benches/store-compare/Cargo.toml`

use std::time::Instant;

use redb::ReadableDatabase;

const BATCH: usize = 64;
const RECORDS: usize = 200_000;
const STREAMS: usize = 1_000;
const READ_STREAM_RECORDS: usize = 20_000;
const PAGE: usize = 100;

fn key(stream: usize, seq: u64) -> Vec<u8> {
    let mut k = format!("stream-{stream:06}").into_bytes();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn expiry_key(stream: usize, seq: u64) -> Vec<u8> {
    let mut k = (1_800_000_000_000_000u64 + seq).to_be_bytes().to_vec();
    k.extend_from_slice(&key(stream, seq));
    k
}

const VALUE: [u8; 100] = [b'x'; 100];

trait Store {
    fn append(&self, batch: &[(usize, u64)]);
    fn read_page(&self, stream: usize, after: u64) -> usize;
}

struct Fjall {
    db: fjall::Database,
    log: fjall::Keyspace,
    expiry: fjall::Keyspace,
    mode: fjall::PersistMode,
}

impl Store for Fjall {
    fn append(&self, batch: &[(usize, u64)]) {
        let mut b = self.db.batch().durability(Some(self.mode));
        for &(s, q) in batch {
            b.insert(&self.log, key(s, q), VALUE.to_vec());
            b.insert(&self.expiry, expiry_key(s, q), Vec::new());
        }
        b.commit().expect("commit");
    }

    fn read_page(&self, stream: usize, after: u64) -> usize {
        self.log
            .range(key(stream, after + 1)..key(stream, u64::MAX))
            .take(PAGE)
            .map(|g| g.into_inner().expect("read").1.len())
            .count()
    }
}

const LOG: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("log");
const EXPIRY: redb::TableDefinition<&[u8], ()> = redb::TableDefinition::new("expiry");

struct Redb(redb::Database);

impl Store for Redb {
    fn append(&self, batch: &[(usize, u64)]) {
        let tx = self.0.begin_write().expect("tx");
        {
            let mut log = tx.open_table(LOG).expect("table");
            let mut expiry = tx.open_table(EXPIRY).expect("table");
            for &(s, q) in batch {
                log.insert(key(s, q).as_slice(), VALUE.as_slice()).expect("insert");
                expiry.insert(expiry_key(s, q).as_slice(), ()).expect("insert");
            }
        }
        tx.commit().expect("commit");
    }

    fn read_page(&self, stream: usize, after: u64) -> usize {
        let tx = self.0.begin_read().expect("tx");
        let log = tx.open_table(LOG).expect("table");
        let (from, to) = (key(stream, after + 1), key(stream, u64::MAX));
        log.range(from.as_slice()..to.as_slice()).expect("range").take(PAGE).map(|e| e.expect("read").1.value().len()).count()
    }
}

fn run(name: &str, store: &dyn Store) {
    let mut seqs = vec![0u64; STREAMS];
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    for i in 0..RECORDS {
        let s = (i * 7919) % STREAMS;
        seqs[s] += 1;
        batch.push((s, seqs[s]));
        if batch.len() == BATCH {
            store.append(&batch);
            batch.clear();
        }
    }
    let appends = RECORDS as f64 / started.elapsed().as_secs_f64();

    // One long stream, written in batches, then replayed page by page.
    let long = STREAMS + 1;
    let mut q = 0;
    while q < READ_STREAM_RECORDS as u64 {
        let batch: Vec<_> = (0..BATCH as u64).map(|i| (long, q + i + 1)).collect();
        store.append(&batch);
        q += BATCH as u64;
    }
    let started = Instant::now();
    let (mut after, mut read) = (0u64, 0usize);
    loop {
        let n = store.read_page(long, after);
        if n == 0 {
            break;
        }
        read += n;
        after += n as u64;
    }
    let reads = read as f64 / started.elapsed().as_secs_f64();
    println!("{name:<28} appends: {appends:>10.0} records/s   replay: {reads:>10.0} records/s ({read} read)");
}

fn main() {
    println!("{RECORDS} records of 100 B in batches of {BATCH} over {STREAMS} streams; replay of {READ_STREAM_RECORDS} in pages of {PAGE}");
    for (name, mode) in [
        ("fjall (journal to OS)", fjall::PersistMode::Buffer),
        ("fjall (fdatasync)", fjall::PersistMode::SyncData),
    ] {
        let dir = tempfile::tempdir().expect("dir");
        let db = fjall::Database::builder(dir.path()).open().expect("open");
        let log = db.keyspace("log", fjall::KeyspaceCreateOptions::default).expect("ks");
        let expiry = db.keyspace("expiry", fjall::KeyspaceCreateOptions::default).expect("ks");
        run(name, &Fjall { db, log, expiry, mode });
    }
    let dir = tempfile::tempdir().expect("dir");
    let db = redb::Database::create(dir.path().join("db.redb")).expect("open");
    run("redb (fsync per commit)", &Redb(db));
}
