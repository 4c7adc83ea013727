//! `--route owner|other`: which node each stream's requests go to, from the cluster's ring.

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;

use crate::{Args, HttpClient, RouteChoice, stream_name};

/// The id and the base URL of each stream index under `--route owner|other`, from the
/// cluster's ring: `{prefix}-{index}`, or with `--owned-by` the first `--streams` of
/// `{prefix}-0`, `{prefix}-1`, … that member owns.
pub(crate) async fn route_streams(
    client: &HttpClient,
    args: &Args,
    prefix: &str,
) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    use ipubsub_cluster::{Node, NodeId, Ring};
    let request = Request::builder()
        .uri(format!("{}/api/v1/cluster", args.url[0]))
        .body(Full::new(Bytes::new()))?;
    let body = client
        .request(request)
        .await?
        .into_body()
        .collect()
        .await?
        .to_bytes();
    let view: serde_json::Value = serde_json::from_slice(&body).context("/api/v1/cluster")?;
    let members: Vec<Node> = view["members"]
        .as_array()
        .context("members")?
        .iter()
        .map(|m| {
            let id = NodeId::new(m["id"].as_str().context("id")?)?;
            let addr = m["httpAddr"].as_str().context("httpAddr")?.parse()?;
            anyhow::Ok(Node::new(id, addr))
        })
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(
        members.len() > 1 || args.route == RouteChoice::Owner,
        "--route other needs two or more members"
    );
    anyhow::ensure!(
        args.via_proxy.is_none() || args.route == RouteChoice::Owner,
        "--via-proxy needs --route owner"
    );
    if let Some(owner) = &args.owned_by {
        anyhow::ensure!(
            members.iter().any(|m| m.id().as_str() == owner),
            "--owned-by {owner}: no such member"
        );
    }
    let ring = Ring::new(members.clone(), args.virtual_nodes);
    let (mut names, mut urls) = (Vec::new(), Vec::new());
    for i in 0.. {
        if names.len() == args.streams {
            break;
        }
        let name = stream_name(prefix, i);
        let stream = ipubsub_core::StreamId::new(name.clone())?;
        let owner = ring.owner(&stream).context("an empty ring")?;
        if args
            .owned_by
            .as_ref()
            .is_some_and(|o| o != owner.id().as_str())
        {
            continue;
        }
        let node = match args.route {
            RouteChoice::Other => members
                .iter()
                .find(|m| m.id() != owner.id())
                .context("another member")?,
            _ => owner,
        };
        names.push(name);
        urls.push(match &args.via_proxy {
            Some(proxy) => proxy.clone(),
            None => format!("http://{}", node.http_addr()),
        });
    }
    Ok((names, urls))
}
