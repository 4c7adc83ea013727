//! The example backend passes the same conformance suite as the built-in stores.

use ipubsub_examples::JournalStore;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_store_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("journal.jsonl");
    ipubsub_storage::testsuite::run(|| async { JournalStore::open(&path).expect("open") }).await;
}
