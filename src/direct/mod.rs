//! The direct source: `CLIENT LIST` read from the Redis nodes themselves, for what DAS cannot
//! see (direct-connection clusters) and for self-managed Redis.
//!
//! One multiplexed connection per node is kept and reused across polls; it is named
//! [`CLIENT_NAME`] so it (and any other exporter's) is left out of every figure. A connection that
//! fails or times out is dropped and re-opened on the next attempt; the back-off between attempts
//! is [`with_retries`]'s, so a dead node costs one throttled attempt per back-off step, never a
//! reconnect storm. An attempt covers every node of the instance (their replies are fetched
//! concurrently), so it takes one throttle slot, like one DAS request does.
//!
//! The pure parts live in [`client_list`] (the line parser) and [`cluster`] (`CLUSTER NODES`).

pub mod client_list;
pub mod cluster;
mod node;
mod tls;
mod wire;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;

use crate::config::{parse_endpoint, Endpoint, InstanceConfig, TlsFiles};
use crate::snapshot::{Fold, Limits, Snapshot};
use crate::source::{with_retries, PollContext, PollError, Source};

use node::Auth;
pub use node::NodeClient;

/// The name the exporter gives its own connections (`CLIENT SETNAME`); clients with this name are
/// excluded from every figure, so several exporters watching one server never count each other.
pub const CLIENT_NAME: &str = "redis-session-exporter";

/// Connections unused for this long are closed (their instance was removed or changed).
const IDLE_CONNECTION: Duration = Duration::from_secs(3600);

/// Folds one node's `CLIENT LIST` reply: every client except the exporters' own connections
/// (named [`CLIENT_NAME`], or carrying `own_id`), and a tally of client IPs as source counts.
pub fn fold_client_list(fold: &mut Fold, node_id: &str, reply: &str, own_id: Option<u64>) {
    let mut sources: HashMap<&str, u64> = HashMap::new();
    for c in client_list::parse(reply) {
        if c.name == CLIENT_NAME || (own_id.is_some() && c.id == own_id) {
            continue;
        }
        fold.add(&c.view(node_id));
        *sources.entry(c.client_ip()).or_insert(0) += 1;
    }
    for (ip, n) in sources {
        fold.add_source(ip, n);
    }
}

/// Key of the connection pool: one connection per node and identity.
type PoolKey = (String, Auth);

/// The direct source: a pool of node connections, and the last cluster layout seen per seed.
#[derive(Debug)]
pub struct DirectSource {
    pool: Mutex<HashMap<PoolKey, Arc<NodeClient>>>,
    layouts: Mutex<HashMap<PoolKey, Vec<Endpoint>>>,
    /// The largest `CLIENT LIST` or `CLUSTER NODES` reply taken (`[das] max_body_bytes`).
    max_reply_bytes: u64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DirectSource {
    /// Replies larger than `max_reply_bytes` (`[das] max_body_bytes`, the bound a DAS answer
    /// has too) fail the poll as `invalid_response`.
    pub fn new(max_reply_bytes: u64) -> Self {
        Self {
            pool: Mutex::default(),
            layouts: Mutex::default(),
            max_reply_bytes,
        }
    }

    fn node(&self, endpoint: &Endpoint, auth: &Auth) -> Arc<NodeClient> {
        let mut pool = lock(&self.pool);
        pool.retain(|_, n| {
            Arc::strong_count(n) > 1 || lock(&n.last_used).elapsed() < IDLE_CONNECTION
        });
        pool.entry((endpoint.url.clone(), auth.clone()))
            .or_insert_with(|| {
                Arc::new(
                    NodeClient::new(
                        endpoint.clone(),
                        auth.username.clone(),
                        auth.password_file.clone(),
                    )
                    .with_tls(auth.tls.clone())
                    .with_reply_cap(self.max_reply_bytes),
                )
            })
            .clone()
    }

    /// The nodes to ask this round.
    async fn endpoints(
        &self,
        inst: &InstanceConfig,
        auth: &Auth,
        timeout: Duration,
    ) -> Result<Vec<Endpoint>, PollError> {
        let config_error = |message: String| PollError::Other {
            code: "config",
            message,
        };
        let tls = inst.is_tls();
        if !inst.nodes.is_empty() {
            return inst
                .nodes
                .iter()
                .map(|n| parse_endpoint(n, tls).map_err(config_error))
                .collect();
        }
        let seed =
            parse_endpoint(inst.address.as_deref().unwrap_or(""), false).map_err(config_error)?;
        if !inst.cluster {
            return Ok(vec![seed]);
        }
        // The seed first, then the nodes seen last time: the cluster stays visible while
        // the seed node is down.
        let key = (seed.url.clone(), auth.clone());
        let mut candidates = vec![seed.clone()];
        candidates.extend(lock(&self.layouts).get(&key).cloned().unwrap_or_default());
        candidates.dedup();
        let scheme = if tls { "rediss" } else { "redis" };
        let seed_host = seed
            .node_id
            .rsplit_once(':')
            .map_or("", |(h, _)| h)
            .to_owned();
        let mut last_err = None;
        for c in candidates {
            let node = self.node(&c, auth);
            match node
                .query_text(&redis::cmd("CLUSTER").arg("NODES").clone(), timeout)
                .await
            {
                Ok((text, _)) => {
                    let found: Vec<Endpoint> = cluster::parse_nodes(&text, &seed_host)
                        .into_iter()
                        .map(|n| Endpoint {
                            url: format!("{scheme}://{}", n.addr),
                            node_id: n.addr,
                        })
                        .collect();
                    if found.is_empty() {
                        return Err(PollError::Other {
                            code: "cluster",
                            message: "CLUSTER NODES listed no reachable node".into(),
                        });
                    }
                    lock(&self.layouts).insert(key, found.clone());
                    return Ok(found);
                }
                // "ERR This instance has cluster support disabled" and the like.
                Err(PollError::Other {
                    code: "server",
                    message,
                }) => {
                    return Err(PollError::Other {
                        code: "cluster",
                        message,
                    })
                }
                Err(e) if e.is_transient() => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or(PollError::Connection("no cluster node answered".into())))
    }

    async fn attempt(
        &self,
        inst: &InstanceConfig,
        limits: &Limits,
        timeout: Duration,
    ) -> Result<Snapshot, PollError> {
        let auth = Auth {
            username: inst.username.clone(),
            password_file: inst.password_file.clone(),
            tls: TlsFiles::of(inst),
        };
        let endpoints = self.endpoints(inst, &auth, timeout).await?;
        let nodes: Vec<Arc<NodeClient>> = endpoints.iter().map(|e| self.node(e, &auth)).collect();
        // Both commands go out together on each node's connection: the limit costs no extra
        // round trip.
        let replies =
            futures_util::future::join_all(nodes.iter().map(|n| {
                futures_util::future::join(n.client_list(timeout), n.maxclients(timeout))
            }))
            .await;
        let mut fold = Fold::for_limits(limits);
        let mut limit = Some(0u64);
        for (node, (reply, maxclients)) in nodes.iter().zip(replies) {
            // One node failing fails the poll: partial figures would look like a drop in sessions.
            let (text, own_id) = reply?;
            fold_client_list(&mut fold, node.node_id(), &text, own_id);
            // The instance holds at most the sum of its nodes' limits; one unknown makes it unknown.
            limit = limit.zip(maxclients).map(|(sum, n)| sum.saturating_add(n));
        }
        let now_ms = crate::clock::unix_millis(SystemTime::now());
        let mut snap = fold.finish(limits, None, Some(now_ms));
        snap.max_connections = limit.filter(|&n| n > 0);
        Ok(snap)
    }
}

impl Source for DirectSource {
    fn poll<'a>(
        &'a self,
        instance: &'a InstanceConfig,
        ctx: &'a PollContext,
    ) -> BoxFuture<'a, Result<Snapshot, PollError>> {
        Box::pin(with_retries(ctx, move |timeout| {
            self.attempt(instance, &ctx.limits, timeout)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_connections_are_excluded_and_sources_tallied() {
        let reply = "\
id=1 addr=10.0.0.5:1 name=redis-session-exporter db=0 flags=N cmd=client|list multi=-1\n\
id=2 addr=10.0.0.5:2 name=app db=0 flags=N cmd=get multi=-1 user=default tot-mem=100 ssub=2\n\
id=3 addr=10.0.0.6:3 name= db=3 flags=P cmd=subscribe sub=1 multi=-1 user=default\n\
id=9 addr=10.0.0.7:3 name= db=0 flags=N cmd=client|list multi=-1\n";
        let mut f = Fold::new();
        fold_client_list(&mut f, "n:1", reply, Some(9));
        let s = f.finish(&Limits::default(), None, None);
        assert_eq!(s.sessions, 2);
        assert_eq!(s.by_node, vec![("n:1".into(), 2)]);
        assert_eq!(
            s.by_source,
            vec![("10.0.0.5".into(), 1), ("10.0.0.6".into(), 1)]
        );
        assert_eq!(s.subscriptions_channel, 1);
        let d = s.direct.expect("direct figures");
        assert_eq!(d.by_user, vec![("default".into(), 2)]);
        assert_eq!(d.subscriptions_shard, 2);
        assert_eq!(d.total_memory.sum, 100);
    }
}
