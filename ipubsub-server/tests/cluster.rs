//! Three real server processes forming a cluster by gossip, each on its own ephemeral ports:
//! every API behaviour through every node, membership changes, auth across nodes. What a
//! leave hands over is in `handoff.rs`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::{Cluster, owner_of};
use common::{Client, TestResult};
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_works_through_every_node() -> TestResult {
    let cluster = Arc::new(Cluster::start(3));
    let took = cluster.converge(3, Duration::from_secs(15)).await;
    println!("3 nodes converged in {took:?}");
    let (_, view) = cluster
        .node(0)
        .call(Method::GET, "/api/v1/cluster", "")
        .await;
    assert_eq!(owner_of(&view), ["node-0", "node-1", "node-2"]);

    // Circular buffer: send through one node, receive through each of the others.
    for i in 0..12 {
        let (from, to) = (i % 3, (i + 1) % 3);
        let stream = format!("circ-{i}");
        let (status, _) = cluster
            .node(from)
            .send(json!({"streamId": stream, "messageUuid": format!("m{i}"), "message": i}))
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, body) = cluster
            .node(to)
            .receive(&format!("streamId={stream}&timeoutSeconds=2"))
            .await;
        assert_eq!(
            (status, &body["message"]),
            (StatusCode::OK, &json!(i)),
            "stream {stream}"
        );
    }

    // Sync match: the receiver waits on one node, the sender arrives at another.
    let receiver = tokio::spawn({
        let cluster = cluster.clone();
        async move {
            cluster
                .node(2)
                .receive("streamId=rendezvous&timeoutSeconds=5")
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = cluster
        .node(0)
        .send(json!({"streamId": "rendezvous", "messageUuid": "r", "message": "hi", "inMemoryStreamSize": 0, "blockingSendTimeoutSeconds": 3}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(receiver.await?.1["message"], "hi");

    // A full blocking queue answers 424 through any node.
    let blocking = |id: &str| json!({"streamId": "bq", "messageUuid": id, "message": 1, "inMemoryStreamSize": 1, "blockingSendTimeoutSeconds": 1});
    assert_eq!(cluster.node(1).send(blocking("a")).await.0, StatusCode::OK);
    let (status, body) = cluster.node(2).send(blocking("b")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::FAILED_DEPENDENCY, Some("STREAM_FULL"))
    );

    // Competing receivers on different nodes: each message exactly once.
    let receivers: Vec<_> = (0..9)
        .map(|r| {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                cluster
                    .node(r % 3)
                    .receive("streamId=shared&timeoutSeconds=5")
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    for i in 0..9 {
        cluster
            .node(i % 3)
            .send(json!({"streamId": "shared", "messageUuid": format!("s{i}"), "message": i}))
            .await;
    }
    let mut got = Vec::new();
    for r in receivers {
        let (status, body) = r.await?;
        assert_eq!(status, StatusCode::OK);
        got.push(body["message"].as_i64().ok_or("message")?);
    }
    got.sort_unstable();
    assert_eq!(got, (0..9).collect::<Vec<_>>());

    // The persistent log: written through one node, replayed through every node.
    let mut tokens = Vec::new();
    for i in 0..5 {
        let (status, body) = cluster.node(i % 3).send(json!({"streamId": "log", "messageUuid": format!("p{i}"), "message": i, "writeToDB": true})).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        tokens.push(body["dbResumeToken"].as_str().ok_or("token")?.to_owned());
    }
    for node in 0..3 {
        let (_, body) = cluster
            .node(node)
            .receive("streamId=log&readFromDB=true&maxMessages=10&timeoutSeconds=0")
            .await;
        assert_eq!(
            body["messages"].as_array().map(Vec::len),
            Some(5),
            "node {node}: {body}"
        );
        let (_, body) = cluster
            .node(node)
            .receive(&format!(
                "streamId=log&readFromDB=true&timeoutSeconds=0&dbResumeToken={}",
                tokens[2]
            ))
            .await;
        assert_eq!(body["messageUuid"], "p3");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_others_serve_every_stream_after_a_kill_9() -> TestResult {
    let mut cluster = Cluster::start(3);
    cluster.converge(3, Duration::from_secs(15)).await;
    let killed = cluster.nodes[2].take().ok_or("node 2")?;
    drop(killed.kill9());
    let took = cluster.converge(2, Duration::from_secs(30)).await;
    println!("failure detected and ring rebuilt in {took:?}");
    for i in 0..30 {
        let stream = format!("after-{i}");
        let (status, body) = cluster
            .node(i % 2)
            .send(json!({"streamId": stream, "messageUuid": "m", "message": i}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (status, _) = cluster
            .node((i + 1) % 2)
            .receive(&format!("streamId={stream}&timeoutSeconds=1"))
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    Ok(())
}

/// A node killed and restarted at once (a new life under the same name) is back in every ring
/// within a few gossip rounds, also in the ring of a node that could not reach it meanwhile
/// and suspected it. A suspicion used to last its full 10 s whatever gossip said: the
/// suspecting node served the restarted node's streams itself while the others routed them
/// to it (the churn test's logs showed a node alone in its ring for 5.7 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_is_back_in_every_ring_also_where_it_was_suspected() -> TestResult {
    let mut cluster = Cluster::start(3);
    cluster.converge(3, Duration::from_secs(15)).await;
    drop(cluster.nodes[2].take().ok_or("node 2")?.kill9());
    // Node 0 forwards to the dead node before gossip can notice: refused, it suspects it.
    let mut suspected = false;
    for i in 0..30 {
        let stream = format!("while-down-{i}");
        let (status, body) = cluster
            .node(0)
            .send(json!({"streamId": stream, "messageUuid": "m", "message": i}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let (_, view) = cluster
            .node(0)
            .call(Method::GET, "/api/v1/cluster", "")
            .await;
        if view["members"].as_array().map(Vec::len) == Some(2) {
            suspected = true;
            break;
        }
    }
    assert!(suspected, "node 0 never left the dead node out");
    cluster.add(2);
    let took = cluster.converge(3, Duration::from_secs(4)).await;
    println!("the restarted node was back in every ring {took:?} after it served");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_takes_its_streams_with_their_messages_while_clients_run() -> TestResult {
    let mut cluster = Cluster::start_some(3, 2);
    cluster.converge(2, Duration::from_secs(15)).await;
    let streams = 60;
    for i in 0..streams {
        let (status, _) = cluster
            .node(i % 2)
            .send(
                json!({"streamId": format!("j{i}"), "messageUuid": format!("m{i}"), "message": i}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
    }
    // A client keeps sending and receiving through node 0 while node 2 joins.
    let client_node = cluster.node(0).addr;
    let client = tokio::spawn(async move {
        let client = common::Client::new(client_node);
        let (mut ok, mut failed) = (0, Vec::new());
        let until = Instant::now() + Duration::from_secs(3);
        let mut i = 0;
        while Instant::now() < until {
            let stream = format!("live-{}", i % 40);
            let sent = client
                .send(json!({"streamId": stream, "messageUuid": format!("l{i}"), "message": i}))
                .await
                .0;
            let received = client
                .receive(&format!("streamId={stream}&timeoutSeconds=2"))
                .await
                .0;
            if sent == StatusCode::OK && received == StatusCode::OK {
                ok += 1
            } else {
                // Which request of which stream, and how, for the log of a failing run.
                failed.push(format!("{stream} #{i}: send {sent}, receive {received}"));
            }
            i += 1;
        }
        (ok, failed)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    cluster.add(2);
    cluster.converge(3, Duration::from_secs(15)).await;
    println!("node-2 joined, all views agree in {:?}", started.elapsed());
    let (ok, failed) = client.await?;
    println!(
        "client during the join: {ok} send+receive pairs ok, {} failed",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "requests failed during the join: {failed:?}"
    );

    // Every buffered message is reachable through the new node, moved ones included.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = cluster.take_numbered("j", streams, |_| 2).await;
    assert_eq!(
        received,
        streams,
        "messages stranded on their old owner: {}",
        streams - received
    );
    Ok(())
}

const TOKEN: &str = "cluster-test-token-0123456789";

/// With auth on and a cluster secret: a client's token works through every node, forwards and
/// the hand-off of a leaving node carry the secret, and a client claiming to be a node is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_and_a_secret_every_node_serves_and_a_leave_hands_over() -> TestResult {
    let mut cluster = Cluster::start_configured(
        2,
        2,
        &format!("auth:\n  tokens:\n    - {{name: app, token: {TOKEN}}}\n"),
        &[("IPUBSUB_CLUSTER__SECRET", "cluster-secret-0123456789")],
    );
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("authorization", bearer.as_str())];
    let clients: Vec<Client> = cluster.live().map(|n| Client::new(n.addr)).collect();
    let started = Instant::now();
    loop {
        let mut joined = true;
        for client in &clients {
            let (_, view) = client
                .raw(Method::GET, "/api/v1/cluster", String::new(), &auth)
                .await;
            let view: Value = serde_json::from_slice(&view)?;
            joined &= view["members"].as_array().map(Vec::len) == Some(2);
        }
        if joined {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no convergence"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let streams = 40;
    for i in 0..streams {
        let body =
            json!({"streamId": format!("a{i}"), "messageUuid": format!("m{i}"), "message": i});
        let (status, _) = clients[i % 2]
            .raw(
                Method::POST,
                "/api/v1/streams/send",
                body.to_string(),
                &auth,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "send {i}");
    }
    // No token: refused by whichever node is asked, owner or not.
    let (status, _) = clients[0]
        .raw(
            Method::POST,
            "/api/v1/streams/send",
            json!({"streamId": "a0", "messageUuid": "x", "message": 0}).to_string(),
            &[],
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A client posing as a node, with a token but without the secret.
    let forged = [
        ("authorization", bearer.as_str()),
        ("x-ipubsub-forwarded", "node-1"),
    ];
    let (status, _) = clients[0]
        .raw(
            Method::POST,
            "/api/v1/streams/send",
            json!({"streamId": "a0", "messageUuid": "x", "message": 0}).to_string(),
            &forged,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    let mut leaving = cluster.nodes[1].take().ok_or("node 1")?;
    assert!(leaving.terminate(Duration::from_secs(15)).success());
    let mut received = 0;
    for i in 0..streams {
        let path = format!("/api/v1/streams/receive?streamId=a{i}&timeoutSeconds=0");
        let (status, body) = clients[0]
            .raw(Method::GET, &path, String::new(), &auth)
            .await;
        if status == StatusCode::OK {
            let body: Value = serde_json::from_slice(&body)?;
            assert_eq!(body["message"], json!(i));
            received += 1;
        }
    }
    assert_eq!(received, streams, "messages lost across the leave");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_local_log_in_a_multi_node_cluster_is_refused_naming_the_fix() -> TestResult {
    let cluster = Cluster::start_configured(
        2,
        2,
        "",
        &[("IPUBSUB_STORAGE__NODE_LOCAL_LOG_IN_CLUSTER", "false")],
    );
    for node in 0..2 {
        let server = cluster.node(node);
        let (status, body) = server
            .send(json!({"streamId": "log", "messageUuid": "m", "message": 1, "writeToDB": true}))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], "PERSISTENCE_NOT_SHARED", "{body}");
        let message = body["error"]["message"].as_str().ok_or("message")?;
        assert!(message.contains("storage.backend: postgres"), "{message}");
        let (status, body) = server
            .receive("streamId=log&readFromDB=true&timeoutSeconds=0")
            .await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (StatusCode::BAD_REQUEST, &json!("PERSISTENCE_NOT_SHARED")),
            "{body}"
        );
        // In-memory streams are not affected.
        let (status, body) = server
            .send(json!({"streamId": format!("q{node}"), "messageUuid": "m", "message": 1}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_name_a_member_already_uses_refuses_to_start() -> TestResult {
    let cluster = Cluster::start_some(3, 2);
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "node:\n  name: test-node\n  http_bind_addr_port: \"127.0.0.1:0\"\n{}",
            cluster.yaml
        ),
    )?;
    let gossip = format!("127.0.0.1:{}", cluster.ports[2]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ipubsub-server"))
        .arg("--config")
        .arg(&config)
        .env("IPUBSUB_NODE__NAME", "node-0")
        .env("IPUBSUB_NODE__GOSSIP_BIND_ADDR_PORT", &gossip)
        .env("IPUBSUB_STORAGE__EMBEDDED__PATH", dir.path().join("data"))
        .env("RUST_LOG", "warn")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it started: {stderr}");
    assert!(
        stderr.contains(
            "node.name \"node-0\" is already used by the member gossiping from 127.0.0.1:"
        ),
        "{stderr}"
    );
    assert!(
        String::from_utf8_lossy(&output.stdout).is_empty(),
        "it never said it listens"
    );
    // The members that were there keep serving.
    let (status, _) = cluster
        .node(1)
        .send(json!({"streamId": "after", "messageUuid": "m", "message": 1}))
        .await;
    assert_eq!(status, StatusCode::OK);
    Ok(())
}

/// The `ipubsub_forwards_total` counters of a node's `/metrics`, summed.
async fn forwards(node: &common::TestServer) -> u64 {
    let forwards = node.client().metric("ipubsub_forwards_total{").await;
    forwards.unwrap_or(0.0) as u64
}

/// A batch through one node whose sends span the three owners: each owner gets the sends of
/// its streams as one forwarded batch, every send lands where a receive through any node
/// finds it, in order per stream, and the answers come back in the request's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_spanning_three_owners_is_forwarded_once_per_owner() -> TestResult {
    let cluster = Cluster::start(3);
    cluster.converge(3, Duration::from_secs(15)).await;
    let streams = 24;
    let mut sends = Vec::new();
    for round in 0..3 {
        for s in 0..streams {
            sends.push(json!({"streamId": format!("batch-{s}"), "messageUuid": format!("m{s}-{round}"), "message": round, "inMemoryStreamSize": 10}));
        }
    }
    sends.push(json!({"streamId": "", "messageUuid": "bad", "message": 0}));
    let before = forwards(cluster.node(0)).await;
    let (status, body) = cluster
        .node(0)
        .call(
            Method::POST,
            "/api/v1/streams/sendBatch",
            &json!({ "messages": sends }).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let results = body["results"].as_array().ok_or("results")?;
    assert_eq!(results.len(), 3 * streams + 1);
    assert!(
        results[..3 * streams]
            .iter()
            .all(|r| r == &json!({"status": 200})),
        "{body}"
    );
    assert_eq!(results[3 * streams]["status"], 400);
    let forwarded = forwards(cluster.node(0)).await - before;
    assert_eq!(forwarded, 2, "one forward per other owner");
    for s in 0..streams {
        let (status, body) = cluster
            .node(s % 3)
            .receive(&format!(
                "streamId=batch-{s}&timeoutSeconds=0&maxMessages=10"
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
        let got = common::messages(&body);
        assert_eq!(got, [&json!(0), &json!(1), &json!(2)], "stream batch-{s}");
    }
    Ok(())
}

/// Event streams opened through a node that owns none of their streams: the owner's events
/// pass through as they come, and the owner counts one connection from the node for all of
/// them (forwarding speaks HTTP/2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_through_a_non_owner_share_one_connection_to_the_owner() -> TestResult {
    const STREAMS: usize = 16;
    let cluster = Cluster::start(2);
    cluster.converge(2, Duration::from_secs(15)).await;
    let via = common::h2_client(cluster.node(0).addr);
    let mut streams = Vec::new();
    for i in 0..STREAMS {
        let path = format!("/api/v1/streams/receive?streamId=sse-{i}&timeoutSeconds=20");
        let mut events = via.events(&path, &[]).await;
        assert_eq!(events.status, StatusCode::OK);
        events
            .next(Duration::from_secs(2))
            .await
            .ok_or("no preamble")?;
        streams.push(events);
    }
    let owner = cluster.node(1).client();
    let relayed = forwards(cluster.node(0)).await;
    assert!(relayed >= 1, "no stream of {STREAMS} is owned by node 1");
    // The test's own connection, and node 0's one connection for every relayed stream.
    assert_eq!(owner.metric("ipubsub_http_connections").await, Some(2.0));
    for i in 0..STREAMS {
        let send = json!({"streamId": format!("sse-{i}"), "messageUuid": "m", "message": i});
        assert_eq!(owner.send(send).await.0, StatusCode::OK);
    }
    for (i, events) in streams.iter_mut().enumerate() {
        let event = events.next_event(Duration::from_secs(3)).await;
        let event = event.ok_or_else(|| format!("no event on sse-{i}"))?;
        assert_eq!(event.json()["message"], json!(i), "{event:?}");
    }
    println!("{relayed} of {STREAMS} event streams relayed by node 0");
    Ok(())
}
