//! The production 3-node NATS cluster, for tests: `deploy/nats/cluster-node{1,2,3}.conf` and
//! `deploy/nats/accounts.conf` as shipped, with only what must differ on one test machine
//! rewritten — the ports (client, route, monitoring), the peers' host names (`pf-nats-N:6222` →
//! `127.0.0.1:<its route port>`) and the store directories. Secrets come from the environment, as
//! in production: every `$PF_<USER>_PASSWORD` the files reference is set to `<user>-pw`
//! ([`TestCluster::password`]) and `$PF_ROUTE_URLS` to the peers' route URLs with the route
//! credentials. Every node is killed, and its store removed, when the cluster is dropped.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use proxflow_runtime::bus;
use proxflow_runtime::config::{NatsConfig, NatsUrls, Secret};
use proxflow_runtime::nats_server::{self, NatsServerProcess, ServerOptions};
use proxflow_runtime::ops::Metrics;

use crate::{TestkitError, project_dir};

/// Nodes in the cluster.
pub const NODES: usize = 3;

/// The user the shipped nodes accept routes from (`cluster.authorization`).
const ROUTE_USER: &str = "route";

/// The variable holding the route URLs (with credentials) in the shipped node files.
const ROUTE_URLS_VAR: &str = "PF_ROUTE_URLS";

/// Where one node listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodePorts {
    /// Clients (`listen`, 4222 in production).
    pub client: u16,
    /// Routes to the other nodes (`cluster.listen`, 6222).
    pub route: u16,
    /// Monitoring (`http`, 8222): `/jsz`, `/routez`.
    pub monitor: u16,
}

/// Three nats-servers forming the shipped cluster. Nodes are numbered 1 to 3, as `pf-nats-N`.
#[derive(Debug)]
pub struct TestCluster {
    // Dropped first: the servers are killed before their stores are removed.
    nodes: Vec<NatsServerProcess>,
    ports: Vec<NodePorts>,
    names: Vec<String>,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// Starts the three shipped nodes (each is up once it accepts clients; the cluster elects its
    /// JetStream meta leader afterwards — [`TestCluster::wait_for_jetstream`] waits for that).
    pub fn start() -> Result<Self, TestkitError> {
        let bin = nats_server::locate_supported(&project_dir())?;
        let deploy = project_dir().join("deploy/nats");
        let dir = tempfile::tempdir()?;
        let ports = free_ports()?;

        // Includes resolve beside the including file, so the accounts go next to the nodes.
        let accounts = read(&deploy.join("accounts.conf"))?;
        write(&dir.path().join("accounts.conf"), &accounts)?;
        let mut variables = referenced_variables(&accounts);
        let mut configs = Vec::new();
        let mut names = Vec::new();
        for node in 1..=NODES {
            let name = format!("cluster-node{node}.conf");
            let shipped = read(&deploy.join(&name))?;
            variables.extend(referenced_variables(&shipped));
            let store = dir.path().join(format!("node{node}"));
            let config = dir.path().join(&name);
            let node_ports = ports[node - 1];
            write(
                &config,
                &rewrite(&name, &shipped, node_ports, &ports, &store)?,
            )?;
            names.push(server_name(&name, &shipped)?);
            configs.push((config, store, node_ports));
        }
        let env = environment(&variables, &ports)?;

        let mut nodes = Vec::new();
        for (config, store, node_ports) in configs {
            nodes.push(NatsServerProcess::start(ServerOptions {
                bin: bin.clone(),
                store_dir: store,
                port: node_ports.client,
                ready_timeout: Duration::from_secs(15),
                config_file: Some(config),
                // The shipped file as it is: its own listen address, store and JetStream.
                config_is_complete: true,
                env: env.clone(),
            })?);
        }
        Ok(Self {
            nodes,
            ports,
            names,
            _dir: dir,
        })
    }

    /// The password the cluster gives `user` (`admin`, `gateway`, …, `route`).
    pub fn password(user: &str) -> String {
        format!("{user}-pw")
    }

    /// Every node's client URL, as `nats.url` lists them in production.
    pub fn urls(&self) -> NatsUrls {
        self.ports
            .iter()
            .map(|p| NatsUrls::local(p.client))
            .reduce(NatsUrls::plus)
            .unwrap_or_default()
    }

    /// Client settings for `user` of `accounts.conf` on every node, with R3 streams, its private
    /// inbox prefix (`_INBOX` for `admin`) and test-sized timeouts.
    pub fn nats_config(&self, user: &str) -> NatsConfig {
        NatsConfig {
            url: self.urls(),
            user: Some(user.to_owned()),
            password: Secret::new(Self::password(user)),
            inbox_prefix: if user == "admin" {
                "_INBOX".to_owned()
            } else {
                format!("_INBOX_{user}")
            },
            replicas: 3,
            connect_timeout: Duration::from_secs(20),
            request_timeout: Duration::from_secs(5),
            ..NatsConfig::default()
        }
    }

    /// Waits until JetStream answers as `admin`: the meta leader is elected. Fails with every
    /// node's last log lines when it is not within `timeout`.
    pub async fn wait_for_jetstream(&self, timeout: Duration) -> Result<(), TestkitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let bus = bus::connect(&self.nats_config("admin"), "testkit", Metrics::new()).await?;
        loop {
            let last =
                match tokio::time::timeout(Duration::from_secs(2), bus.js.query_account()).await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no answer within 2s".to_owned(),
                };
            if tokio::time::Instant::now() >= deadline {
                return Err(TestkitError::NoJetStream {
                    timeout,
                    last,
                    logs: self.logs(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where node `node` (1 to 3) listens.
    pub fn ports(&self, node: usize) -> Option<NodePorts> {
        self.ports.get(node.wrapping_sub(1)).copied()
    }

    /// The monitoring base URL of node `node` (`http://127.0.0.1:<port>`, for `/jsz`).
    pub fn monitor_url(&self, node: usize) -> Option<String> {
        self.ports(node)
            .map(|p| format!("http://127.0.0.1:{}", p.monitor))
    }

    /// The `server_name` of node `node` (`pf-nats-N`).
    pub fn server_name(&self, node: usize) -> Option<&str> {
        self.names.get(node.wrapping_sub(1)).map(String::as_str)
    }

    /// The node whose `server_name` is `name`.
    pub fn node_named(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name).map(|i| i + 1)
    }

    /// Stops node `node` like an operator would (SIGTERM; its store is kept for a restart).
    pub fn stop(&mut self, node: usize) -> Result<(), TestkitError> {
        self.node_mut(node)?.stop();
        Ok(())
    }

    /// A service context as `admin` on every node, the topology declared R3 (what a
    /// `proxflow serve` of the cluster runs on).
    pub async fn context(
        &self,
        name: &str,
    ) -> Result<proxflow_runtime::ServiceContext, TestkitError> {
        crate::context(&self.nats_config("admin"), name).await
    }

    /// The node leading `stream` now, if it has a leader on one of ours.
    pub async fn stream_leader(
        &self,
        js: &async_nats::jetstream::Context,
        stream: &str,
    ) -> Option<usize> {
        let mut stream = js.get_stream(stream).await.ok()?;
        let leader = stream.info().await.ok()?.cluster.as_ref()?.leader.clone()?;
        self.node_named(&leader)
    }

    /// Kills node `node` outright (`kill -9`: no goodbye to its peers; its store is kept).
    pub fn kill(&mut self, node: usize) -> Result<(), TestkitError> {
        self.node_mut(node)?.kill();
        Ok(())
    }

    /// Starts node `node` again on its ports and store.
    pub fn restart(&mut self, node: usize) -> Result<(), TestkitError> {
        Ok(self.node_mut(node)?.restart()?)
    }

    /// Every node's last log lines, for assertion messages.
    pub fn logs(&self) -> String {
        self.names
            .iter()
            .zip(&self.nodes)
            .map(|(name, node)| format!("--- {name}\n{}", node.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn node_mut(&mut self, node: usize) -> Result<&mut NatsServerProcess, TestkitError> {
        self.nodes
            .get_mut(node.wrapping_sub(1))
            .ok_or(TestkitError::NoSuchNode(node))
    }
}

fn read(path: &Path) -> Result<String, TestkitError> {
    std::fs::read_to_string(path).map_err(|source| TestkitError::File {
        path: path.to_owned(),
        source,
    })
}

fn write(path: &Path, text: &str) -> Result<(), TestkitError> {
    std::fs::write(path, text).map_err(|source| TestkitError::File {
        path: path.to_owned(),
        source,
    })
}

/// Three ports per node, free when asked. All are held until every one is picked so that no two
/// coincide; a server that loses a race for one fails to start and says which.
fn free_ports() -> Result<Vec<NodePorts>, TestkitError> {
    let listeners = (0..NODES * 3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(TestkitError::Ports)?;
    let ports = listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(TestkitError::Ports)?;
    Ok(ports
        .chunks(3)
        .map(|p| NodePorts {
            client: p[0],
            route: p[1],
            monitor: p[2],
        })
        .collect())
}

/// The shipped node file with its ports, the peers' host names and its store directory replaced.
/// Each of those must appear exactly once where expected: a shipped file whose shape changed
/// fails here instead of starting with production ports or paths.
fn rewrite(
    name: &str,
    shipped: &str,
    own: NodePorts,
    all: &[NodePorts],
    store: &Path,
) -> Result<String, TestkitError> {
    let mut seen = [0usize; 4];
    let mut out = String::new();
    for line in shipped.lines() {
        let trimmed = line.trim_start();
        let mut line = line.to_owned();
        if !trimmed.starts_with('#') {
            for (i, peer) in all.iter().enumerate() {
                line = line.replace(
                    &format!("pf-nats-{}:6222", i + 1),
                    &format!("127.0.0.1:{}", peer.route),
                );
            }
            if trimmed.starts_with("listen:") && line.contains(":4222") {
                line = line.replace(":4222", &format!(":{}", own.client));
                seen[0] += 1;
            } else if trimmed.starts_with("listen:") && line.contains(":6222") {
                line = line.replace(":6222", &format!(":{}", own.route));
                seen[1] += 1;
            } else if trimmed.starts_with("http:") && line.contains(":8222") {
                line = line.replace(":8222", &format!(":{}", own.monitor));
                seen[2] += 1;
            } else if trimmed.starts_with("store_dir:") {
                let indent = &line[..line.len() - trimmed.len()];
                line = format!("{indent}store_dir: \"{}\"", store.display());
                seen[3] += 1;
            }
        }
        out.push_str(&line);
        out.push('\n');
    }
    for (count, what) in seen.iter().zip([
        "client `listen: …:4222`",
        "cluster `listen: …:6222`",
        "`http: …:8222`",
        "`store_dir:`",
    ]) {
        if *count != 1 {
            return Err(TestkitError::ClusterConfig(format!(
                "{name}: expected one {what} line to rewrite, found {count}"
            )));
        }
    }
    Ok(out)
}

/// The node's `server_name` (how the cluster names its leaders).
fn server_name(name: &str, shipped: &str) -> Result<String, TestkitError> {
    shipped
        .lines()
        .find_map(|l| l.trim().strip_prefix("server_name:"))
        .map(|n| n.trim().trim_matches('"').to_owned())
        .ok_or_else(|| TestkitError::ClusterConfig(format!("{name}: no server_name")))
}

/// `$PF_…` variables referenced outside comments.
fn referenced_variables(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split('$').skip(1))
        .map(|rest| {
            rest.chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .filter(|v| v.starts_with("PF_"))
        .collect()
}

/// Values for the referenced variables: a password per `PF_<USER>_PASSWORD`, the route URLs.
fn environment(
    variables: &BTreeSet<String>,
    ports: &[NodePorts],
) -> Result<Vec<(String, String)>, TestkitError> {
    variables
        .iter()
        .map(|var| {
            if var == ROUTE_URLS_VAR {
                let urls: Vec<String> = ports
                    .iter()
                    .map(|p| {
                        format!(
                            "\"nats-route://{ROUTE_USER}:{}@127.0.0.1:{}\"",
                            TestCluster::password(ROUTE_USER),
                            p.route
                        )
                    })
                    .collect();
                return Ok((var.clone(), format!("[{}]", urls.join(", "))));
            }
            let user = var
                .strip_prefix("PF_")
                .and_then(|v| v.strip_suffix("_PASSWORD"))
                .ok_or_else(|| {
                    TestkitError::ClusterConfig(format!(
                        "the shipped files reference ${var}, which the harness does not know"
                    ))
                })?;
            Ok((var.clone(), TestCluster::password(&user.to_lowercase())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PORTS: [NodePorts; 3] = [
        NodePorts {
            client: 1001,
            route: 1002,
            monitor: 1003,
        },
        NodePorts {
            client: 2001,
            route: 2002,
            monitor: 2003,
        },
        NodePorts {
            client: 3001,
            route: 3002,
            monitor: 3003,
        },
    ];

    #[test]
    fn only_ports_peers_and_the_store_change() {
        let shipped = "# listen: 0.0.0.0:4222 in a comment stays\nserver_name: pf-nats-2\n\
            listen: 0.0.0.0:4222\nhttp: 127.0.0.1:8222\njetstream {\n  store_dir: /var/lib/x\n  \
            sync_interval: always\n}\ncluster {\n  listen: 0.0.0.0:6222\n  routes: [\n    \
            nats-route://pf-nats-1:6222\n    nats-route://pf-nats-3:6222\n  ]\n}\n";
        let out = rewrite("n2", shipped, PORTS[1], &PORTS, Path::new("/tmp/s")).expect("ok");
        assert_eq!(
            out,
            "# listen: 0.0.0.0:4222 in a comment stays\nserver_name: pf-nats-2\n\
            listen: 0.0.0.0:2001\nhttp: 127.0.0.1:2003\njetstream {\n  store_dir: \"/tmp/s\"\n  \
            sync_interval: always\n}\ncluster {\n  listen: 0.0.0.0:2002\n  routes: [\n    \
            nats-route://127.0.0.1:1002\n    nats-route://127.0.0.1:3002\n  ]\n}\n"
        );
        assert_eq!(server_name("n2", shipped).expect("named"), "pf-nats-2");
        let missing = rewrite(
            "n2",
            "listen: 0.0.0.0:4222\n",
            PORTS[1],
            &PORTS,
            Path::new("/s"),
        );
        assert!(matches!(missing, Err(TestkitError::ClusterConfig(_))));
    }

    #[test]
    fn every_referenced_secret_gets_a_value() {
        let vars = referenced_variables(
            "# $PF_IN_COMMENT\nauthorization { user: route, password: $PF_ROUTE_PASSWORD }\n\
             routes: $PF_ROUTE_URLS\n{ user: admin, password: $PF_ADMIN_PASSWORD }\n",
        );
        let env = environment(&vars, &PORTS).expect("known variables");
        assert_eq!(
            env,
            [
                ("PF_ADMIN_PASSWORD".to_owned(), "admin-pw".to_owned()),
                ("PF_ROUTE_PASSWORD".to_owned(), "route-pw".to_owned()),
                (
                    "PF_ROUTE_URLS".to_owned(),
                    "[\"nats-route://route:route-pw@127.0.0.1:1002\", \
                     \"nats-route://route:route-pw@127.0.0.1:2002\", \
                     \"nats-route://route:route-pw@127.0.0.1:3002\"]"
                        .to_owned()
                ),
            ]
        );
        let unknown = environment(&referenced_variables("x: $PF_SOMETHING\n"), &PORTS);
        assert!(matches!(unknown, Err(TestkitError::ClusterConfig(_))));
    }
}
