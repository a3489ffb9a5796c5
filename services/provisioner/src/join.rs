//! The k3s join step: a configurable command with a JSON contract.
//!
//! The command gets the request as JSON on stdin and in the file named by `PROXFLOW_JOIN_REQUEST`,
//! and `{ip}`, `{name}`, `{vmid}`, `{user}`, `{request}` in its arguments are replaced. Exit 0 is success;
//! anything else (or the timeout) fails the step. Its output tail is kept in the workflow record either
//! way. The default runs the shipped playbook with the VM as its only inventory host:
//! `ansible-playbook -i {ip}, -u {user} deploy/ansible/k3s-join.yml -e @{request}`.

use std::time::Duration;

use proxflow_runtime::command::{self, CommandError, CommandOutput};
use serde::{Deserialize, Serialize};

/// `[provision.join]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JoinConfig {
    /// Program and arguments, with placeholders.
    pub command: Vec<String>,
    /// Deadline for one run.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for JoinConfig {
    fn default() -> Self {
        Self {
            command: [
                "ansible-playbook",
                "-i",
                "{ip},",
                "-u",
                "{user}",
                "deploy/ansible/k3s-join.yml",
                "-e",
                "@{request}",
            ]
            .map(String::from)
            .to_vec(),
            timeout: Duration::from_secs(900),
        }
    }
}

/// What the join command is told about the VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The workflow.
    pub workflow_id: String,
    /// VMID.
    pub vmid: u32,
    /// VM name (becomes the k3s node name).
    pub name: String,
    /// Address to reach it at.
    pub ip: String,
    /// SSH user (the cloud-init user).
    pub user: String,
    /// Profile.
    pub profile: String,
}

/// Why the join step failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The command could not run.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// The request file could not be written.
    #[error("writing the join request: {0}")]
    Request(std::io::Error),
    /// It ran and failed.
    #[error("join command failed ({})", .0.summary())]
    Failed(CommandOutput),
}

/// Runs the join command for `request`; the output is returned on success and inside the error on failure.
pub async fn run(config: &JoinConfig, request: &JoinRequest) -> Result<CommandOutput, JoinError> {
    let json = serde_json::to_vec_pretty(request).map_err(|e| JoinError::Request(e.into()))?;
    let vmid = request.vmid.to_string();
    let output = command::run_with_request(
        &config.command,
        &[
            ("ip", &request.ip),
            ("name", &request.name),
            ("vmid", &vmid),
            ("user", &request.user),
        ],
        json,
        "PROXFLOW_JOIN_REQUEST",
        config.timeout,
    )
    .await?;
    if output.success() {
        Ok(output)
    } else {
        Err(JoinError::Failed(output))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn request() -> JoinRequest {
        JoinRequest {
            workflow_id: "prov-1".into(),
            vmid: 104,
            name: "k3s-4".into(),
            ip: "10.20.0.44".into(),
            user: "ubuntu".into(),
            profile: "k8s-node".into(),
        }
    }

    #[tokio::test]
    async fn placeholders_stdin_and_request_file_follow_the_contract() {
        let config = JoinConfig {
            command: ["sh", "-c", "echo {ip} {name} {vmid} {user}; cat \"$PROXFLOW_JOIN_REQUEST\" | tr -d ' \\n'; echo; tr -d ' \\n'", "join"]
                .map(String::from)
                .to_vec(),
            timeout: Duration::from_secs(10),
        };
        let out = run(&config, &request()).await.unwrap();
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(lines[0], "10.20.0.44 k3s-4 104 ubuntu");
        assert!(
            lines[1].contains("\"vmid\":104") && lines[1].contains("\"workflow_id\":\"prov-1\"")
        );
        assert_eq!(
            lines[1], lines[2],
            "stdin carries the same JSON as the file"
        );
    }

    #[tokio::test]
    async fn a_failing_command_keeps_its_output() {
        let config = JoinConfig {
            command: [
                "sh",
                "-c",
                "echo 'TASK [k3s_join] fatal: unreachable' >&2; exit 4",
            ]
            .map(String::from)
            .to_vec(),
            timeout: Duration::from_secs(10),
        };
        match run(&config, &request()).await {
            Err(JoinError::Failed(out)) => {
                assert_eq!(out.code, Some(4));
                assert!(out.stderr.contains("unreachable"));
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}
