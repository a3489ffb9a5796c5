//! External commands (ansible-playbook, kubectl, ssh, zfs) with a deadline and captured output.
//!
//! Every service that shells out needs the same four things: the command killed — with its children —
//! when it overruns (an `ansible-playbook` leaves ssh processes behind otherwise), output captured but
//! bounded (a chatty playbook must not grow a workflow record without limit), stdin for a JSON request,
//! and a span with the program, exit status and duration.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;
use tracing::Instrument;

/// Output kept per stream: the last this many bytes.
pub const OUTPUT_TAIL_BYTES: usize = 16 * 1024;

/// What to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommandSpec {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Written to stdin, which is then closed (empty: stdin is /dev/null).
    pub stdin: Vec<u8>,
    /// Working directory (`None`: inherited).
    pub cwd: Option<std::path::PathBuf>,
    /// Deadline for the whole run.
    pub timeout: Duration,
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit code; `None` when killed by a signal (including our timeout).
    pub code: Option<i32>,
    /// Whether the deadline killed it.
    pub timed_out: bool,
    /// Last [`OUTPUT_TAIL_BYTES`] of stdout (lossy UTF-8).
    pub stdout: String,
    /// Last [`OUTPUT_TAIL_BYTES`] of stderr (lossy UTF-8).
    pub stderr: String,
    /// Wall time.
    pub duration: Duration,
}

impl CommandOutput {
    /// Exit 0 within the deadline.
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.timed_out
    }

    /// One line for errors: `exit 2: <last stderr line>` / `timed out after 30s`.
    pub fn summary(&self) -> String {
        if self.timed_out {
            return format!("timed out after {:.0?}", self.duration);
        }
        let last = self
            .stderr
            .lines()
            .rev()
            .chain(self.stdout.lines().rev())
            .find(|l| !l.trim().is_empty())
            .unwrap_or("")
            .trim();
        match self.code {
            Some(code) => format!("exit {code}: {last}"),
            None => format!("killed by a signal: {last}"),
        }
    }
}

/// Why a command could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Empty argv.
    #[error("no command configured")]
    Empty,
    /// The program could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// argv[0].
        program: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The request file of a JSON-contract command could not be written.
    #[error("writing the command's request file: {0}")]
    Request(std::io::Error),
    /// Waiting on it failed.
    #[error("waiting for {program}: {source}")]
    Wait {
        /// argv[0].
        program: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// Runs a command of proxflow's JSON command contract (the provisioner's join, the patcher's guest
/// commands): `request` (JSON) goes to its stdin and into a temporary file named by the environment
/// variable `env_var` and by the `{request}` placeholder; every `{key}` of `values` in `template` is
/// replaced. The file lives until the command ends.
pub async fn run_with_request(
    template: &[String],
    values: &[(&str, &str)],
    request: Vec<u8>,
    env_var: &str,
    timeout: Duration,
) -> Result<CommandOutput, CommandError> {
    let mut file = tempfile::Builder::new()
        .prefix("proxflow-request-")
        .suffix(".json")
        .tempfile()
        .map_err(CommandError::Request)?;
    std::io::Write::write_all(&mut file, &request).map_err(CommandError::Request)?;
    let path = file.path().display().to_string();
    let argv = template
        .iter()
        .map(|arg| {
            values
                .iter()
                .fold(arg.replace("{request}", &path), |a, (key, value)| {
                    a.replace(&format!("{{{key}}}"), value)
                })
        })
        .collect();
    let spec = CommandSpec {
        argv,
        env: vec![(env_var.to_string(), path)],
        stdin: request,
        cwd: None,
        timeout,
    };
    let output = run(&spec).await;
    drop(file);
    output
}

/// Runs `spec` to completion or its deadline. A non-zero exit is an `Ok` output, not an error: the
/// caller decides what it means and keeps the output either way.
pub async fn run(spec: &CommandSpec) -> Result<CommandOutput, CommandError> {
    let program = spec.argv.first().ok_or(CommandError::Empty)?.clone();
    let span = tracing::info_span!(
        "command",
        otel.name = %format!("run {program}"),
        command.program = %program,
        command.exit_code = tracing::field::Empty,
        command.timed_out = tracing::field::Empty,
    );
    let output = run_inner(spec, &program).instrument(span.clone()).await?;
    if let Some(code) = output.code {
        span.record("command.exit_code", code);
    }
    span.record("command.timed_out", output.timed_out);
    Ok(output)
}

async fn run_inner(spec: &CommandSpec, program: &str) -> Result<CommandOutput, CommandError> {
    let started = Instant::now();
    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..])
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.stdin.is_empty() {
            Stdio::null()
        } else {
            Stdio::piped()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout kills the children (ssh, python) too.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &spec.cwd {
        cmd.current_dir(cwd);
    }
    let mut child = cmd.spawn().map_err(|source| CommandError::Spawn {
        program: program.to_string(),
        source,
    })?;
    let guard = guard(child.id());
    if let Some(mut stdin) = child.stdin.take() {
        let input = spec.stdin.clone();
        tokio::spawn(async move {
            // A command that does not read its stdin closes the pipe; that is not our failure.
            let _ = stdin.write_all(&input).await;
        });
    }
    let stdout = tokio::spawn(tail(child.stdout.take()));
    let stderr = tokio::spawn(tail(child.stderr.take()));
    let (code, timed_out) = match tokio::time::timeout(spec.timeout, child.wait()).await {
        Ok(status) => {
            let status = status.map_err(|source| CommandError::Wait {
                program: program.to_string(),
                source,
            })?;
            (status.code(), false)
        }
        Err(_) => {
            kill_group(child.id());
            let _ = child.kill().await;
            (None, true)
        }
    };
    if let Some(mut guard) = guard {
        // Closing its stdin makes it kill what the command left behind in its group (nothing may
        // outlive the step), then itself.
        drop(guard.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(5), guard.wait()).await;
    }
    Ok(CommandOutput {
        code,
        timed_out,
        stdout: stdout.await.unwrap_or_default(),
        stderr: stderr.await.unwrap_or_default(),
        duration: started.elapsed(),
    })
}

/// A guard in the command's process group: `sh` blocked reading a pipe this process holds the
/// only write end of. When this process ends in any way — `kill -9` included, which runs no code of
/// ours — the kernel closes the pipe, the guard's read returns, and it SIGKILLs the whole group:
/// the command and everything it started (`ansible-playbook`, its `ssh`), so no external command
/// outlives the service that started it and a redelivered step never finds a previous attempt's
/// command still running. (A parent-death signal would need `unsafe` `pre_exec` and reaches only
/// the direct child, not its children.) `None` when the command already ended and took its group.
fn guard(leader: Option<u32>) -> Option<tokio::process::Child> {
    let group = i32::try_from(leader?).ok()?;
    let spawned = Command::new("/bin/sh")
        .args(["-c", "read _ignored; kill -9 0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(group)
        .kill_on_drop(true)
        .spawn();
    match spawned {
        Ok(guard) => Some(guard),
        Err(e) => {
            // The group is gone (the command ended at once) or no /bin/sh: run unguarded.
            tracing::debug!(error = %e, "command guard not started");
            None
        }
    }
}

/// SIGKILL to the whole process group of a child spawned as its group's leader (`process_group(0)`;
/// `pid` from `Child::id`, `None` once reaped). A signal syscall, not the `kill` program: minimal
/// hosts and containers often lack procps.
pub fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Reads a stream to its end, keeping the last [`OUTPUT_TAIL_BYTES`] (lossy UTF-8): a child's
/// output for error messages, bounded however much it writes.
pub async fn tail(stream: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut stream) = stream else {
        return String::new();
    };
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * OUTPUT_TAIL_BYTES {
                    kept.drain(..kept.len() - OUTPUT_TAIL_BYTES);
                }
            }
        }
    }
    if kept.len() > OUTPUT_TAIL_BYTES {
        kept.drain(..kept.len() - OUTPUT_TAIL_BYTES);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sh(script: &str, timeout: Duration) -> CommandSpec {
        CommandSpec {
            argv: vec!["sh".into(), "-c".into(), script.into()],
            timeout,
            ..CommandSpec::default()
        }
    }

    #[tokio::test]
    async fn captures_output_exit_code_and_stdin() {
        let mut spec = sh("cat; echo oops >&2; exit 3", Duration::from_secs(10));
        spec.stdin = b"{\"vmid\":104}".to_vec();
        let out = run(&spec).await.unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "{\"vmid\":104}");
        assert_eq!(out.summary(), "exit 3: oops");
        assert!(!out.success());
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        // The grandchild would create the marker after 1 s unless the group is killed.
        let script = format!("(sleep 1; touch {}) & sleep 30", marker.display());
        let out = run(&sh(&script, Duration::from_millis(300))).await.unwrap();
        assert!(out.timed_out && !out.success());
        assert!(out.summary().starts_with("timed out"));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !marker.exists(),
            "a child of the timed-out command survived"
        );
    }

    /// Alive and not a zombie (a container's init may not reap orphans).
    fn alive(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    }

    #[tokio::test]
    async fn nothing_a_command_started_outlives_it() {
        let out = run(&sh(
            "sleep 600 >/dev/null 2>&1 & echo $!",
            Duration::from_secs(10),
        ))
        .await
        .unwrap();
        assert!(out.success(), "{out:?}");
        let pid = out.stdout.trim().to_owned();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while alive(&pid) {
            assert!(
                std::time::Instant::now() < deadline,
                "the command's background process {pid} outlived it"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn output_is_bounded_to_its_tail() {
        let out = run(&sh(
            "i=0; while [ $i -lt 5000 ]; do echo line-$i-xxxxxxxxxxxxxxxx; i=$((i+1)); done",
            Duration::from_secs(20),
        ))
        .await
        .unwrap();
        assert!(out.success());
        assert!(out.stdout.len() <= OUTPUT_TAIL_BYTES);
        assert!(
            out.stdout
                .trim_end()
                .ends_with("line-4999-xxxxxxxxxxxxxxxx")
        );
    }

    #[tokio::test]
    async fn a_missing_program_is_an_error() {
        let spec = CommandSpec {
            argv: vec!["/nonexistent/ansible-playbook".into()],
            timeout: Duration::from_secs(1),
            ..CommandSpec::default()
        };
        assert!(matches!(run(&spec).await, Err(CommandError::Spawn { .. })));
    }
}
