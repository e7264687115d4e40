//! A 3-node NATS JetStream cluster for tests: three `nats-server` processes on 127.0.0.1 joined
//! by routes, each with its own store directory and `sync_interval: always` (every write on
//! disk before it is acknowledged), as compose/nats/nats.conf and scripts/cluster.sh run it.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::nats::{NATS_SERVER_VERSION, server_answers};
use super::process::{START_ATTEMPTS, ServerProcess, find_binary, free_port};
use super::{TestkitError, TestkitErrorKind};

/// Nodes of the cluster: a majority (two) keeps every replicated stream writable when one is
/// down.
pub const NATS_CLUSTER_NODES: usize = 3;
/// Largest message the nodes accept, as [`super::NatsServer`].
const MAX_PAYLOAD_BYTES: usize = 2 * 1024 * 1024;

/// One node: its client and route ports, its name, its directory and its process.
#[derive(Debug)]
struct Node {
    port: u16,
    route_port: u16,
    name: String,
    dir: PathBuf,
    process: Option<ServerProcess>,
}

/// Three JetStream servers in one cluster, on free ports, storing in a temporary directory.
/// Killed on drop. [`NatsCluster::kill`] and [`NatsCluster::start_again`] crash and restart one
/// node on its ports and storage.
#[derive(Debug)]
pub struct NatsCluster {
    binary: PathBuf,
    cluster_name: String,
    nodes: Vec<Node>,
    /// Holds the nodes' directories.
    dir: TempDir,
}

impl NatsCluster {
    /// Starts the three nodes and waits until JetStream answers on each (the cluster has
    /// elected its meta leader).
    pub async fn start() -> Result<Self, TestkitError> {
        let binary = find_binary(
            "DCPIPE_NATS_SERVER",
            &format!("nats-server-{NATS_SERVER_VERSION}/bin/nats-server"),
        )?;
        let dir = tempfile::Builder::new()
            .prefix("dcpipe-nats-cluster-")
            .tempdir()
            .map_err(|e| TestkitError::new(TestkitErrorKind::Process, format!("temp dir: {e}")))?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let mut cluster = NatsCluster {
            binary,
            cluster_name: format!("dcpipe_test_{id}"),
            nodes: Vec::new(),
            dir,
        };
        let mut attempt = 1;
        loop {
            cluster.nodes = (0..NATS_CLUSTER_NODES)
                .map(|i| {
                    let node_dir = cluster.dir.path().join(format!("n{}", i + 1));
                    fs::create_dir_all(&node_dir).map_err(|e| {
                        TestkitError::new(TestkitErrorKind::Process, format!("node dir: {e}"))
                    })?;
                    Ok(Node {
                        port: free_port()?,
                        route_port: free_port()?,
                        name: format!("dcpipe_test_{id}_n{}", i + 1),
                        dir: node_dir,
                        process: None,
                    })
                })
                .collect::<Result<_, TestkitError>>()?;
            match cluster.launch_all().await {
                // A port taken between its choice and the bind: every node again, on new ports.
                Err(e) if e.kind() == TestkitErrorKind::Exited && attempt < START_ATTEMPTS => {
                    tracing::warn!("nats cluster did not start: {e}");
                    for node in &mut cluster.nodes {
                        if let Some(mut process) = node.process.take() {
                            process.kill();
                        }
                        let _ = fs::remove_dir_all(&node.dir);
                    }
                    attempt += 1;
                }
                launched => return launched.map(|()| cluster),
            }
        }
    }

    async fn launch_all(&mut self) -> Result<(), TestkitError> {
        // Every node is spawned before any is waited for: JetStream answers only once a
        // majority has elected a meta leader.
        for i in 0..self.nodes.len() {
            self.spawn(i)?;
        }
        for i in 0..self.nodes.len() {
            self.wait_ready(i).await?;
        }
        Ok(())
    }

    /// The configuration of node `i`, in nats-server's format.
    fn config(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let mut config = String::new();
        let _ = writeln!(config, "listen: 127.0.0.1:{}", node.port);
        let _ = writeln!(config, "server_name: {}", node.name);
        let _ = writeln!(config, "max_payload: {MAX_PAYLOAD_BYTES}");
        let _ = writeln!(
            config,
            "jetstream {{\n  store_dir: {:?}\n  sync_interval: always\n}}",
            node.dir.join("jetstream").display().to_string()
        );
        let routes: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, other)| format!("    nats-route://127.0.0.1:{}", other.route_port))
            .collect();
        let _ = writeln!(
            config,
            "cluster {{\n  name: {}\n  listen: 127.0.0.1:{}\n  routes: [\n{}\n  ]\n}}",
            self.cluster_name,
            node.route_port,
            routes.join("\n")
        );
        config
    }

    fn spawn(&mut self, i: usize) -> Result<(), TestkitError> {
        let config = self.config(i);
        let node = &mut self.nodes[i];
        let config_path = node.dir.join("nats.conf");
        fs::write(&config_path, config).map_err(|e| {
            TestkitError::new(TestkitErrorKind::Process, format!("nats config: {e}"))
        })?;
        let args = vec!["-c".to_owned(), config_path.display().to_string()];
        node.process = Some(ServerProcess::spawn(
            "nats-server",
            &self.binary,
            &args,
            &node.dir,
            &node.dir.join("nats.log"),
        )?);
        Ok(())
    }

    async fn wait_ready(&mut self, i: usize) -> Result<(), TestkitError> {
        let url = self.node_url(i);
        let name = self.nodes[i].name.clone();
        let process = self.nodes[i].process.as_mut().ok_or_else(|| {
            TestkitError::new(TestkitErrorKind::Process, format!("node {i} not running"))
        })?;
        process
            .wait_ready(|| server_answers(url.clone(), name.clone(), false))
            .await
    }

    /// `host:port` of every node, to give to the NATS bus.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect()
    }

    /// The bus URL naming the three nodes, `nats://127.0.0.1:<p1>,127.0.0.1:<p2>,…`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addresses().join(","))
    }

    /// The URL of node `i` alone.
    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// The server name of node `i` (as JetStream names stream leaders and replicas).
    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Which node is called `name`.
    pub fn node_named(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|node| node.name == name)
    }

    /// Whether node `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes[i].process.is_some()
    }

    /// The log file of node `i`.
    pub fn log_path(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("nats.log")
    }

    /// The directory of node `i` (its configuration, log and store).
    pub fn node_dir(&self, i: usize) -> &Path {
        &self.nodes[i].dir
    }

    /// SIGKILLs node `i` (as in a crash). Its storage stays for [`NatsCluster::start_again`].
    pub fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.nodes[i].process.take() {
            process.kill();
        }
    }

    /// Starts the killed node `i` again on its ports and storage, and waits until JetStream
    /// answers on it.
    pub async fn start_again(&mut self, i: usize) -> Result<(), TestkitError> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_ready(i).await
    }
}
