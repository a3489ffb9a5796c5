//! Commands in a VM: through the QEMU guest agent's exec (the Proxmox API), or through a command
//! of the JSON command contract (Ansible, ssh) — and the apt calls made over either.

use std::collections::BTreeMap;
use std::time::Duration;

use proxflow_pve::PveClient;
use proxflow_runtime::backoff::Backoff;
use proxflow_runtime::command;
use proxflow_runtime::workflow::StepError;
use proxflow_schemas::patch::PackageChange;
use serde::Serialize;

use crate::classify;
use crate::config::{GuestConfig, Transport};

/// A VM as the patcher addresses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Vm {
    /// VMID.
    pub vmid: u32,
    /// Name (the k3s node name).
    pub name: String,
    /// Its address (static `ipconfig0`), for the command transport.
    #[serde(default)]
    pub ip: String,
}

/// How a command in the guest ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// Exit code.
    pub code: i64,
    /// Standard output.
    pub out: String,
    /// Standard error.
    pub err: String,
}

impl Exec {
    fn tail(&self) -> String {
        let text = if self.err.trim().is_empty() {
            &self.out
        } else {
            &self.err
        };
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }
}

/// What the command transport is told.
#[derive(Serialize)]
struct GuestRequest<'a> {
    vmid: u32,
    name: &'a str,
    ip: &'a str,
    user: &'a str,
    argv: &'a [&'a str],
}

/// Runs commands in VMs.
#[derive(Clone)]
pub struct Guest {
    pub(crate) pve: PveClient,
    pub(crate) config: GuestConfig,
}

/// The argv of the package-manager calls (the simulator understands exactly these).
pub mod argv {
    /// Refreshes the package lists.
    pub const UPDATE: &[&str] = &["apt-get", "update"];
    /// Lists what a dist-upgrade would do, held packages included.
    pub const SIMULATE: &[&str] = &[
        "apt-get",
        "-s",
        "-o",
        "APT::Ignore-Hold=true",
        "dist-upgrade",
    ];
    /// Upgrades, keeping changed config files.
    pub const UPGRADE: &[&str] = &[
        "env",
        "DEBIAN_FRONTEND=noninteractive",
        "apt-get",
        "-y",
        "-o",
        "Dpkg::Options::=--force-confold",
        "dist-upgrade",
    ];
    /// Exit 0 when a reboot is required.
    pub const REBOOT_REQUIRED: &[&str] = &["test", "-f", "/var/run/reboot-required"];
    /// Installed packages, `NAME\tVERSION` lines.
    pub const INSTALLED: &[&str] = &["dpkg-query", "-W"];
    /// The running kernel.
    pub const KERNEL: &[&str] = &["uname", "-r"];
}

impl Guest {
    /// Runs `argv` in `vm`; a failure to reach the guest (agent not up yet, Proxmox unavailable) is
    /// transient, a non-zero exit is the caller's to judge.
    pub async fn run(&self, vm: &Vm, argv: &[&str]) -> Result<Exec, StepError> {
        match self.config.transport {
            Transport::Agent => self.run_agent(vm, argv).await,
            Transport::Command => self.run_command(vm, argv).await,
        }
    }

    async fn run_agent(&self, vm: &Vm, argv: &[&str]) -> Result<Exec, StepError> {
        let unreachable = |e: proxflow_pve::PveError| {
            StepError::transient(format!("guest agent of VM {} ({}): {e}", vm.vmid, vm.name))
                .with_source(e)
        };
        let pid = self
            .pve
            .agent_exec(vm.vmid, argv)
            .await
            .map_err(unreachable)?;
        let mut polls = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
            attempts: u32::MAX,
            deadline: self.config.exec_timeout,
        }
        .start();
        while polls.next().await.is_some() {
            let status = self
                .pve
                .agent_exec_status(vm.vmid, pid)
                .await
                .map_err(unreachable)?;
            if status.exited {
                return Ok(Exec {
                    code: status.exitcode.unwrap_or(-1),
                    out: status.out_data.unwrap_or_default(),
                    err: status.err_data.unwrap_or_default(),
                });
            }
        }
        Err(StepError::terminal(format!(
            "`{}` on VM {} did not finish within {:?}",
            argv.join(" "),
            vm.vmid,
            self.config.exec_timeout
        )))
    }

    async fn run_command(&self, vm: &Vm, argv: &[&str]) -> Result<Exec, StepError> {
        let request = GuestRequest {
            vmid: vm.vmid,
            name: &vm.name,
            ip: &vm.ip,
            user: &self.config.user,
            argv,
        };
        let json = serde_json::to_vec(&request)
            .map_err(|e| StepError::terminal(format!("encoding the guest request: {e}")))?;
        let vmid = vm.vmid.to_string();
        let output = command::run_with_request(
            &self.config.command,
            &[
                ("ip", &vm.ip),
                ("name", &vm.name),
                ("vmid", &vmid),
                ("user", &self.config.user),
            ],
            json,
            "PROXFLOW_GUEST_REQUEST",
            self.config.exec_timeout,
        )
        .await
        .map_err(|e| StepError::terminal(e.to_string()).with_source(e))?;
        if output.timed_out {
            return Err(StepError::terminal(format!(
                "guest command for `{}` on VM {} timed out",
                argv.join(" "),
                vm.vmid
            )));
        }
        Ok(Exec {
            code: output.code.map_or(-1, i64::from),
            out: output.stdout,
            err: output.stderr,
        })
    }

    /// Runs `argv` and requires exit 0.
    pub async fn check(&self, vm: &Vm, argv: &[&str]) -> Result<Exec, StepError> {
        let exec = self.run(vm, argv).await?;
        if exec.code != 0 {
            return Err(StepError::terminal(format!(
                "`{}` on {} exited {}: {}",
                argv.join(" "),
                vm.name,
                exec.code,
                exec.tail()
            )));
        }
        Ok(exec)
    }

    /// Refreshes the lists and returns the pending changes (held packages included) and the
    /// running kernel.
    pub async fn scan(&self, vm: &Vm) -> Result<(Vec<PackageChange>, String), StepError> {
        self.check(vm, argv::UPDATE).await?;
        let simulation = self.check(vm, argv::SIMULATE).await?;
        let changes = classify::parse_simulation(&simulation.out)
            .map_err(|e| StepError::terminal(format!("VM {}: {e}", vm.vmid)))?;
        let kernel = self.check(vm, argv::KERNEL).await?.out.trim().to_string();
        Ok((changes, kernel))
    }

    /// `apt-mark hold|unhold` of `packages` (nothing to do for none).
    pub async fn mark(&self, vm: &Vm, hold: bool, packages: &[String]) -> Result<(), StepError> {
        if packages.is_empty() {
            return Ok(());
        }
        let mut argv = vec!["apt-mark", if hold { "hold" } else { "unhold" }];
        argv.extend(packages.iter().map(String::as_str));
        self.check(vm, &argv).await.map(|_| ())
    }

    /// Upgrades everything but `keep` (held for the upgrade, released after, whether it worked or
    /// not). A failed upgrade is terminal with apt's own words.
    pub async fn upgrade(&self, vm: &Vm, keep: &[String]) -> Result<(), StepError> {
        self.mark(vm, true, keep).await?;
        let upgraded = self.check(vm, argv::UPGRADE).await;
        let released = self.mark(vm, false, keep).await;
        upgraded?;
        released
    }

    /// Whether the guest asks for a reboot.
    pub async fn reboot_required(&self, vm: &Vm) -> Result<bool, StepError> {
        Ok(self.run(vm, argv::REBOOT_REQUIRED).await?.code == 0)
    }

    /// The installed packages.
    pub async fn installed(&self, vm: &Vm) -> Result<BTreeMap<String, String>, StepError> {
        let exec = self.check(vm, argv::INSTALLED).await?;
        Ok(classify::parse_installed(&exec.out))
    }

    /// The running kernel.
    pub async fn kernel(&self, vm: &Vm) -> Result<String, StepError> {
        Ok(self.check(vm, argv::KERNEL).await?.out.trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    fn guest(command: &[&str]) -> Guest {
        let pve = PveClient::new(&proxflow_pve::PveConfig {
            token_secret: proxflow_runtime::config::Secret::new("unused-by-the-command-transport"),
            ..proxflow_pve::PveConfig::default()
        })
        .unwrap();
        Guest {
            pve,
            config: GuestConfig {
                transport: Transport::Command,
                command: command.iter().map(|s| (*s).to_string()).collect(),
                user: "ubuntu".into(),
                exec_timeout: Duration::from_secs(10),
            },
        }
    }

    fn vm() -> Vm {
        Vm {
            vmid: 101,
            name: "k3s-1".into(),
            ip: "10.20.0.11".into(),
        }
    }

    #[tokio::test]
    async fn the_command_transport_follows_the_json_contract_and_passes_the_exit_code_on() {
        let g = guest(&[
            "sh",
            "-c",
            "echo {ip} {name} {vmid} {user}; tr -d ' \\n' < \"$PROXFLOW_GUEST_REQUEST\"; echo; \
             tr -d ' \\n'; echo; echo oops >&2; exit 3",
        ]);
        let exec = g.run(&vm(), argv::REBOOT_REQUIRED).await.unwrap();
        assert_eq!(exec.code, 3);
        let lines: Vec<&str> = exec.out.lines().collect();
        assert_eq!(lines[0], "10.20.0.11 k3s-1 101 ubuntu");
        // The request, in the file and on stdin: the VM and the argv to run on it.
        for line in &lines[1..3] {
            assert!(
                line.contains(r#""argv":["test","-f","/var/run/reboot-required"]"#)
                    && line.contains(r#""vmid":101"#),
                "{line}"
            );
        }
        assert_eq!(exec.err.trim(), "oops");
        // `check` turns a non-zero exit into a terminal error with the output's tail.
        let err = g.check(&vm(), argv::KERNEL).await.unwrap_err();
        assert_eq!(err.kind, proxflow_runtime::workflow::ErrorKind::Terminal);
        assert!(
            err.message.contains("exited 3") && err.message.contains("oops"),
            "{}",
            err.message
        );
    }

    #[tokio::test]
    async fn a_command_that_overruns_is_a_terminal_error() {
        let mut g = guest(&["sleep", "5"]);
        g.config.exec_timeout = Duration::from_millis(200);
        let err = g.run(&vm(), argv::UPDATE).await.unwrap_err();
        assert!(err.message.contains("timed out"), "{}", err.message);
    }
}
