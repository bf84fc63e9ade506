//! Targets: node base URLs checked to be on loopback. The load tester refuses anything else, so
//! it can never be pointed at someone else's server.

use crate::{BenchError, Result};
use reqwest::Url;
use std::net::IpAddr;

/// One gateway node: `http://127.0.0.1:port` and the matching `ws://…/ws`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// `http://host:port` without a trailing slash.
    pub http: String,
    /// `ws://host:port/ws`.
    pub ws: String,
}

/// Whether a host names this machine's loopback interface.
pub fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    h.parse::<IpAddr>()
        .map(|ip| ip.is_loopback())
        .unwrap_or(false)
}

/// Check any URL (http, ws, postgres, …) points at loopback.
pub fn require_loopback(url: &str) -> Result<()> {
    let parsed = Url::parse(url).map_err(|e| BenchError::Invalid(format!("{url}: {e}")))?;
    match parsed.host_str() {
        Some(h) if is_loopback_host(h) => Ok(()),
        _ => Err(BenchError::NotLoopback(url.to_owned())),
    }
}

impl Node {
    /// Parse `http://127.0.0.1:8080`, `127.0.0.1:8080` or `ws://127.0.0.1:8080/ws`.
    pub fn parse(s: &str) -> Result<Node> {
        let s = s.trim();
        let with_scheme = if s.contains("://") {
            s.to_owned()
        } else {
            format!("http://{s}")
        };
        let mut url =
            Url::parse(&with_scheme).map_err(|e| BenchError::Invalid(format!("{s}: {e}")))?;
        match url.scheme() {
            "http" | "ws" => {}
            other => {
                return Err(BenchError::Invalid(format!(
                    "{s}: scheme {other} (use http:// or ws://)"
                )))
            }
        }
        let host = url
            .host_str()
            .ok_or_else(|| BenchError::Invalid(format!("{s}: no host")))?
            .to_owned();
        if !is_loopback_host(&host) {
            return Err(BenchError::NotLoopback(s.to_owned()));
        }
        let port = url.port_or_known_default().unwrap_or(80);
        url.set_path("");
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(Node {
            http: format!("http://{host}:{port}"),
            ws: format!("ws://{host}:{port}/ws"),
        })
    }

    /// Parse a list of nodes, refusing an empty one.
    pub fn parse_all(list: &[String]) -> Result<Vec<Node>> {
        let nodes = list
            .iter()
            .flat_map(|s| s.split(','))
            .filter(|s| !s.trim().is_empty())
            .map(Node::parse)
            .collect::<Result<Vec<_>>>()?;
        if nodes.is_empty() {
            return Err(BenchError::Invalid("at least one node is needed".into()));
        }
        Ok(nodes)
    }

    /// `host:port` of the node, for a raw TCP connect.
    pub fn authority(&self) -> &str {
        self.http.trim_start_matches("http://")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_targets_are_accepted_in_every_spelling() {
        for s in [
            "127.0.0.1:8080",
            "http://127.0.0.1:8080",
            "ws://127.0.0.1:8080/ws",
            "http://localhost:9000/",
            "http://127.0.0.5:1",
            "http://[::1]:8080",
        ] {
            assert!(Node::parse(s).is_ok(), "{s}");
        }
        let n = Node::parse("127.0.0.1:8080").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n.http, "http://127.0.0.1:8080");
        assert_eq!(n.ws, "ws://127.0.0.1:8080/ws");
        assert_eq!(n.authority(), "127.0.0.1:8080");
    }

    #[test]
    fn other_hosts_are_refused() {
        for s in [
            "http://10.0.0.1:8080",
            "example.com:80",
            "http://192.168.1.2",
            "ws://8.8.8.8/ws",
        ] {
            assert!(
                matches!(Node::parse(s), Err(BenchError::NotLoopback(_))),
                "{s}"
            );
        }
        assert!(require_loopback("postgres://postgres@127.0.0.1:5432/x").is_ok());
        assert!(require_loopback("postgres://db.internal:5432/x").is_err());
        assert!(Node::parse("ftp://127.0.0.1").is_err());
        assert!(Node::parse_all(&[]).is_err());
    }
}
