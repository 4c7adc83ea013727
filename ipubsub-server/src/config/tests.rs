//! Tests of the configuration: the shipped files, the printed defaults, README's reference.

use std::collections::BTreeMap;
use std::io::Write;

use super::*;

/// `a.b.c` → its default, for every leaf of the default config.
fn default_keys() -> BTreeMap<String, serde_json::Value> {
    fn walk(prefix: &str, value: serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
        match value {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            leaf => {
                out.insert(prefix.to_owned(), leaf);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        "",
        serde_json::to_value(Config::default()).expect("config"),
        &mut out,
    );
    out
}

#[test]
fn the_printed_default_config_loads_back_to_the_defaults() -> Result<(), Box<dyn std::error::Error>>
{
    let yaml = Config::default_yaml();
    let mut file = tempfile::NamedTempFile::new()?;
    file.write_all(yaml.as_bytes())?;
    assert_eq!(
        Config::load(Some(file.path()))?,
        Config::default(),
        "{yaml}"
    );
    for key in default_keys().keys() {
        let last = key.rsplit('.').next().expect("a key");
        assert!(
            yaml.contains(&format!("{last}:")),
            "{key} missing from\n{yaml}"
        );
    }
    Ok(())
}

/// README's configuration reference lists exactly the keys the structs have, each with
/// the default they have (keys without a default, such as an unset advertise address,
/// are described in words).
#[test]
fn the_readme_reference_matches_the_config_structs() -> Result<(), Box<dyn std::error::Error>> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))?;
    let defaults = default_keys();
    let sections: Vec<&str> = defaults
        .keys()
        .filter_map(|k| k.split('.').next())
        .collect();
    let mut documented = BTreeMap::new();
    for line in readme.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, key, default, ..] = cells[..] else {
            continue;
        };
        let Some(key) = key.strip_prefix('`').and_then(|k| k.strip_suffix('`')) else {
            continue;
        };
        if key.contains('.') && sections.iter().any(|s| key.starts_with(&format!("{s}."))) {
            documented.insert(key.to_owned(), default.to_owned());
        }
    }
    let missing: Vec<_> = defaults
        .keys()
        .filter(|k| !documented.contains_key(*k))
        .collect();
    let stale: Vec<_> = documented
        .keys()
        .filter(|k| !defaults.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty(),
        "keys missing from README's reference: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "README documents keys the config does not have: {stale:?}"
    );
    for (key, value) in &defaults {
        let shown = documented[key].replace('`', "");
        let expected = match value {
            serde_json::Value::Null => continue,
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        // README may group digits ("10,000,000") and space lists out.
        let plain = |s: &str| s.replace([',', ' '], "");
        assert_eq!(plain(&shown), plain(&expected), "default of {key}");
    }
    Ok(())
}

#[test]
fn the_shipped_single_node_config_loads() -> Result<(), Box<dyn std::error::Error>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/single-node.yaml");
    let config = Config::load(Some(&path))?;
    assert_eq!(config.node.http_bind_addr_port, "127.0.0.1:16681".parse()?);
    Ok(())
}

#[test]
fn unknown_keys_and_bad_values_are_errors() -> Result<(), Box<dyn std::error::Error>> {
    let mut file = tempfile::NamedTempFile::new()?;
    writeln!(file, "http:\n  max_timeout_secs: 5")?;
    let err = Config::load(Some(file.path()))
        .err()
        .ok_or("accepted a typo")?;
    assert!(err.to_string().contains("max_timeout_secs"), "{err}");
    assert!(!err.to_string().contains('\n'));

    let mut file = tempfile::NamedTempFile::new()?;
    writeln!(
        file,
        "http:\n  max_timeout_seconds: 10\n  receive_default_timeout_seconds: 30"
    )?;
    let err = Config::load(Some(file.path()))
        .err()
        .ok_or("accepted default > max")?;
    assert!(err.to_string().contains("exceeds"), "{err}");

    let mut file = tempfile::NamedTempFile::new()?;
    writeln!(
        file,
        "http:\n  max_body_bytes: 1000000\n  max_body_bytes_in_flight: 999999"
    )?;
    let err = Config::load(Some(file.path()))
        .err()
        .ok_or("accepted a body budget below one body")?;
    assert!(
        err.to_string().contains("max_body_bytes_in_flight"),
        "{err}"
    );

    assert!(Config::load(Some(Path::new("/nonexistent.yaml"))).is_err());
    Ok(())
}

#[test]
fn tokens_come_from_the_config_and_the_tokens_file() -> Result<(), Box<dyn std::error::Error>> {
    let mut tokens = tempfile::NamedTempFile::new()?;
    writeln!(
        tokens,
        "tokens:\n  - name: reader\n    token: reader-token-0123456789\n    publish: false\n    stream_prefix: \"chat:\""
    )?;
    let mut file = tempfile::NamedTempFile::new()?;
    writeln!(
        file,
        "auth:\n  tokens_file: {}\n  tokens:\n    - name: admin\n      token: admin-token-0123456789\n      requests_per_second: 100",
        tokens.path().display()
    )?;
    let config = Config::load(Some(file.path()))?;
    let auth = config.http_config()?.auth.ok_or("auth is off")?;
    let shown = format!("{auth:?} {config:?}");
    assert!(
        shown.contains("admin") && shown.contains("reader"),
        "{shown}"
    );
    assert!(
        !shown.contains("token-0123456789"),
        "a token shows: {shown}"
    );

    let mut reader = ipubsub_http::TokenGrant::new("reader", "reader-token-0123456789");
    reader.publish = false;
    reader.stream_prefix = "chat:".into();
    let mut admin = ipubsub_http::TokenGrant::new("admin", "admin-token-0123456789");
    admin.requests_per_second = 100;
    assert_eq!(auth, ipubsub_http::Auth::new([admin, reader])?);
    Ok(())
}

#[test]
fn bad_auth_settings_are_errors() -> Result<(), Box<dyn std::error::Error>> {
    let load = |yaml: &str| -> Result<String, Box<dyn std::error::Error>> {
        let mut file = tempfile::NamedTempFile::new()?;
        writeln!(file, "{yaml}")?;
        let config = Config::load(Some(file.path()));
        match config.and_then(|c| c.http_config()) {
            Ok(_) => Err(format!("accepted {yaml}").into()),
            Err(e) => Ok(e.to_string()),
        }
    };
    let err = load(
        "node:\n  gossip_bind_addr_port: 127.0.0.1:0\ncluster:\n  static_bootstrap_node_addr_ports: [\"127.0.0.1:1\"]\nauth:\n  tokens:\n    - {name: a, token: aaaaaaaaaaaaaaaa}",
    )?;
    assert!(err.contains("cluster.secret is needed"), "{err}");
    let err = load("cluster:\n  secret: short")?;
    assert!(err.contains("cluster.secret"), "{err}");
    let err = load("auth:\n  tokens:\n    - {name: a, token: short}")?;
    assert!(err.contains("16 to 1024"), "{err}");
    let err = load("auth:\n  tokens_file: /nonexistent/tokens.yaml")?;
    assert!(err.contains("does not exist"), "{err}");
    let err = load("auth:\n  tokens:\n    - {name: a, token: aaaaaaaaaaaaaaaa, admin: true}")?;
    assert!(err.contains("admin"), "{err}");
    Ok(())
}

#[test]
fn a_node_local_store_in_a_multi_node_cluster_keeps_no_log_unless_allowed()
-> Result<(), Box<dyn std::error::Error>> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/multi-node-2.yaml");
    let mut config = Config::load(Some(&path))?;
    let why = config
        .node_local_refusal()
        .ok_or("the shipped three-node config refuses its embedded log")?;
    assert!(why.contains("storage.backend: postgres"), "{why}");
    assert!(why.contains("storage.node_local_log_in_cluster"), "{why}");
    config.storage.node_local_log_in_cluster = true;
    assert_eq!(config.node_local_refusal(), None, "allowed explicitly");
    config.storage.node_local_log_in_cluster = false;
    config.storage.backend = Backend::Postgres;
    assert_eq!(config.node_local_refusal(), None, "a shared database");

    let single = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/single-node.yaml");
    assert_eq!(Config::load(Some(&single))?.node_local_refusal(), None);
    // A node whose only seed is itself is a cluster of one.
    let mut alone = Config::load(Some(&single))?;
    alone.node.gossip_bind_addr_port = Some("127.0.0.1:17001".parse()?);
    alone.cluster.static_bootstrap_node_addr_ports = vec!["127.0.0.1:17001".into()];
    assert_eq!(alone.node_local_refusal(), None);
    Ok(())
}
