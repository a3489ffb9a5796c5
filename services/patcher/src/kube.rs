//! The k3s side of a node: cordon with an owner marker, drain, readiness, and an uncordon that only
//! lifts a cordon this run made — a node someone cordoned by hand stays cordoned.

use std::time::Duration;

use proxflow_runtime::command::{self, CommandSpec};
use proxflow_runtime::workflow::StepError;
use serde_json::Value;

use crate::config::KubectlConfig;

/// The annotation naming the patch run that cordoned a node.
pub const OWNER_ANNOTATION: &str = "proxflow.io/cordoned-by";
/// The annotation a failed node keeps with the reason (`on_failure = "stop"`).
pub const FAILURE_ANNOTATION: &str = "proxflow.io/patch-failed";

/// A node as kubectl shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeState {
    /// Cordoned.
    pub unschedulable: bool,
    /// The run that cordoned it, if proxflow did.
    pub owner: Option<String>,
    /// Its `Ready` condition is `True`.
    pub ready: bool,
}

/// kubectl, as configured.
#[derive(Debug, Clone)]
pub struct Kubectl {
    pub(crate) config: KubectlConfig,
}

impl Kubectl {
    async fn run(&self, args: &[&str], timeout: Duration) -> Result<String, StepError> {
        let mut argv = self.config.command.clone();
        argv.extend(args.iter().map(|a| (*a).to_string()));
        let spec = CommandSpec {
            argv,
            timeout,
            ..CommandSpec::default()
        };
        let output = command::run(&spec)
            .await
            .map_err(|e| StepError::terminal(format!("kubectl: {e}")).with_source(e))?;
        if !output.success() {
            let message = format!("kubectl {} failed ({})", args.join(" "), output.summary());
            // A node that does not exist stays so; anything else (the API server briefly away
            // while a server node reboots) is tried again later.
            if output.stderr.contains("(NotFound)") {
                return Err(StepError::terminal(message));
            }
            return Err(StepError::transient(message));
        }
        Ok(output.stdout)
    }

    /// The node's state.
    pub async fn node(&self, name: &str) -> Result<NodeState, StepError> {
        let out = self
            .run(&["get", "node", name, "-o", "json"], self.config.timeout)
            .await?;
        let node: Value = serde_json::from_str(&out)
            .map_err(|e| StepError::terminal(format!("kubectl get node {name}: not JSON: {e}")))?;
        let ready = node["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        Ok(NodeState {
            unschedulable: node["spec"]["unschedulable"].as_bool().unwrap_or(false),
            owner: node["metadata"]["annotations"][OWNER_ANNOTATION]
                .as_str()
                .map(str::to_string),
            ready,
        })
    }

    /// Marks the node as ours, then cordons it (a crash in between leaves a marker on a
    /// schedulable node, which the resumed run cordons; never a cordon without the marker).
    pub async fn cordon(&self, name: &str, run: &str) -> Result<(), StepError> {
        let owner = format!("{OWNER_ANNOTATION}={run}");
        self.run(
            &["annotate", "node", name, &owner, "--overwrite"],
            self.config.timeout,
        )
        .await?;
        self.run(&["cordon", name], self.config.timeout).await?;
        Ok(())
    }

    /// Evicts the node's pods.
    pub async fn drain(&self, name: &str) -> Result<(), StepError> {
        let mut args = vec!["drain", name];
        args.extend(self.config.drain_args.iter().map(String::as_str));
        self.run(&args, self.config.drain_timeout)
            .await
            .map(|_| ())
            .map_err(|e| StepError::terminal(e.message))
    }

    /// Uncordons the node if `run` cordoned it, and removes the marker; `false` when it was not ours
    /// (then nothing is changed).
    pub async fn uncordon(&self, name: &str, run: &str) -> Result<bool, StepError> {
        let state = self.node(name).await?;
        if state.owner.as_deref() != Some(run) {
            return Ok(false);
        }
        self.run(&["uncordon", name], self.config.timeout).await?;
        let remove = format!("{OWNER_ANNOTATION}-");
        let failed = format!("{FAILURE_ANNOTATION}-");
        self.run(
            &["annotate", "node", name, &remove, &failed],
            self.config.timeout,
        )
        .await?;
        Ok(true)
    }

    /// Leaves the reason a run stopped on the node (it stays cordoned).
    pub async fn mark_failed(&self, name: &str, reason: &str) -> Result<(), StepError> {
        let text: String = reason.chars().take(200).collect();
        let value = format!("{FAILURE_ANNOTATION}={text}");
        self.run(
            &["annotate", "node", name, &value, "--overwrite"],
            self.config.timeout,
        )
        .await
        .map(|_| ())
    }
}
