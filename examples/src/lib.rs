//! Runnable examples of ipubsub; this library is empty. Run them with
//! `cargo run -p ipubsub-examples --example embedded` or `--example http_client`.
