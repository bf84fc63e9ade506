//! Scraping the nodes' Prometheus `/metrics` before and after a run: counter deltas (every
//! `confab_…_total` series that moved) and gauges as they stand at the end.

use crate::target::require_loopback;
use crate::{BenchError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Samples of one scrape: series (`name{labels}`) → value.
pub type Samples = BTreeMap<String, f64>;

/// Parse the Prometheus text format (comments and histogram buckets skipped).
pub fn parse(text: &str) -> Samples {
    let mut out = Samples::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if series.contains("_bucket{") {
            continue;
        }
        if let Ok(v) = value.trim().parse::<f64>() {
            out.insert(drop_node_label(series), v);
        }
    }
    out
}

/// The `node` label is the same on every series of a scrape; dropping it keeps keys short.
fn drop_node_label(series: &str) -> String {
    let Some(open) = series.find('{') else {
        return series.to_owned();
    };
    let name = &series[..open];
    let labels: Vec<&str> = series[open + 1..]
        .trim_end_matches('}')
        .split(',')
        .filter(|l| !l.is_empty() && !l.starts_with("node="))
        .collect();
    if labels.is_empty() {
        name.to_owned()
    } else {
        format!("{name}{{{}}}", labels.join(","))
    }
}

/// Fetch and parse one node's `/metrics` (a full URL or a node base URL).
pub async fn scrape(client: &reqwest::Client, url: &str) -> Result<Samples> {
    require_loopback(url)?;
    let url = if url.ends_with("/metrics") {
        url.to_owned()
    } else {
        format!("{}/metrics", url.trim_end_matches('/'))
    };
    let text = client
        .get(&url)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| BenchError::Http(format!("{url}: {e}")))?
        .text()
        .await
        .map_err(|e| BenchError::Http(format!("{url}: {e}")))?;
    Ok(parse(&text))
}

/// What moved on one node during a run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MetricsDelta {
    /// The scraped URL.
    pub url: String,
    /// Counters (`…_total`, `…_count`, `…_sum`) that changed, after − before.
    pub counters: BTreeMap<String, f64>,
    /// Gauges at the end (`confab_connections_open`, `confab_subscriptions`, …).
    pub gauges: BTreeMap<String, f64>,
}

/// Deltas between two scrapes.
pub fn delta(url: &str, before: &Samples, after: &Samples) -> MetricsDelta {
    let mut d = MetricsDelta {
        url: url.to_owned(),
        ..Default::default()
    };
    for (k, v) in after {
        let name = k.split('{').next().unwrap_or(k);
        let counter =
            name.ends_with("_total") || name.ends_with("_count") || name.ends_with("_sum");
        if counter {
            let moved = v - before.get(k).copied().unwrap_or(0.0);
            if moved != 0.0 {
                d.counters.insert(k.clone(), crate::stats::round(moved, 6));
            }
        } else if name.starts_with("confab_") {
            d.gauges.insert(k.clone(), *v);
        }
    }
    d
}

/// Scrape every URL (failures become empty scrapes: metrics are an extra, not a requirement).
pub async fn scrape_all(client: &reqwest::Client, urls: &[String]) -> Vec<Samples> {
    let mut out = Vec::with_capacity(urls.len());
    for u in urls {
        out.push(scrape(client, u).await.unwrap_or_default());
    }
    out
}

/// Deltas for every URL.
pub fn deltas(urls: &[String], before: &[Samples], after: &[Samples]) -> Vec<MetricsDelta> {
    urls.iter()
        .enumerate()
        .map(|(i, u)| {
            let empty = Samples::new();
            delta(
                u,
                before.get(i).unwrap_or(&empty),
                after.get(i).unwrap_or(&empty),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_move_and_gauges_stand() {
        let a = parse(
            "# HELP x\nconfab_messages_delivered_total{node=\"n1\"} 10\n\
             confab_connections_open{node=\"n1\"} 5\n\
             confab_fanout_latency_seconds_bucket{node=\"n1\",le=\"0.1\"} 3\n\
             confab_disconnects_total{code=\"4000\",node=\"n1\"} 1\n",
        );
        let b = parse(
            "confab_messages_delivered_total{node=\"n1\"} 25\n\
             confab_connections_open{node=\"n1\"} 7\n\
             confab_disconnects_total{code=\"4000\",node=\"n1\"} 1\n",
        );
        let d = delta("u", &a, &b);
        assert_eq!(
            d.counters.get("confab_messages_delivered_total"),
            Some(&15.0)
        );
        assert!(!d
            .counters
            .contains_key("confab_disconnects_total{code=\"4000\"}"));
        assert_eq!(d.gauges.get("confab_connections_open"), Some(&7.0));
        assert!(!a.keys().any(|k| k.contains("_bucket")));
    }
}
