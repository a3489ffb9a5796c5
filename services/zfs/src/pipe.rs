//! `zfs send … | zfs receive …` between two hosts, with proxflow in the middle of the pipe.
//!
//! Both commands are spawned by this process (each through its own host's prefix, e.g. `ssh
//! backup@offsite`), and the stream is copied from the sender's stdout to the receiver's stdin here,
//! rather than by `sh -c 'a | b'`: that way the bytes are counted exactly, a deadline or a
//! cancellation kills both sides (each in its own process group, so an `ssh` and whatever it started
//! go too), and an error carries the tail of both sides' stderr, which is where zfs says what went
//! wrong. Closing the receiver's stdin is what tells `zfs receive` the stream ended — after a kill
//! too, so a receive never waits for bytes that will not come.

use std::os::fd::AsFd;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use proxflow_runtime::command::{kill_group, tail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Stderr kept per side: the last this many bytes.
/// Copy buffer; large enough that the copy is never the bottleneck of a local send.
const BUFFER_BYTES: usize = 1 << 20;
/// Kernel buffer of each of the two pipes.
const PIPE_BYTES: i32 = 1 << 20;

/// A finished transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// Stream bytes copied.
    pub bytes: u64,
    /// Wall time.
    pub duration: Duration,
}

/// How a transfer ended without succeeding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeEnd {
    /// One side exited non-zero (or the copy failed).
    Failed,
    /// The deadline passed; both sides were killed.
    TimedOut,
    /// Cancelled (shutdown, or a caller giving up); both sides were killed.
    Cancelled,
}

/// Why a transfer did not succeed, with what each side said.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.describe())]
pub struct PipeError {
    /// How it ended.
    pub end: PipeEnd,
    /// Bytes copied before it ended.
    pub bytes: u64,
    /// The sender's exit (`None`: killed or never started).
    pub send_status: Option<String>,
    /// The receiver's exit.
    pub receive_status: Option<String>,
    /// Tail of the sender's stderr.
    pub send_stderr: String,
    /// Tail of the receiver's stderr.
    pub receive_stderr: String,
    /// A failure of proxflow's own (spawning, copying).
    pub local: Option<String>,
    /// Process id of the sending command (for cleaning up after it, see
    /// [`crate::send_receive`]).
    pub send_pid: Option<u32>,
}

impl PipeError {
    fn describe(&self) -> String {
        let how = match self.end {
            PipeEnd::Failed => "failed",
            PipeEnd::TimedOut => "timed out (both sides killed)",
            PipeEnd::Cancelled => "cancelled (both sides killed)",
        };
        let mut text = format!("send | receive {how} after {} bytes", self.bytes);
        if let Some(local) = &self.local {
            text.push_str(&format!("; {local}"));
        }
        for (side, status, stderr) in [
            ("receive", &self.receive_status, &self.receive_stderr),
            ("send", &self.send_status, &self.send_stderr),
        ] {
            if let Some(status) = status {
                text.push_str(&format!("; {side} {status}"));
            }
            let last = last_line(stderr);
            if !last.is_empty() {
                text.push_str(&format!(": {last}"));
            }
        }
        text
    }

    /// The receiver's stderr and the sender's, for matching zfs messages.
    pub fn stderr(&self) -> String {
        format!("{}\n{}", self.receive_stderr, self.send_stderr)
    }
}

fn last_line(text: &str) -> &str {
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
}

fn status_text(status: &std::io::Result<ExitStatus>) -> Option<String> {
    match status {
        Ok(s) => Some(match s.code() {
            Some(code) => format!("exit {code}"),
            None => "killed by a signal".to_owned(),
        }),
        Err(e) => Some(format!("wait failed: {e}")),
    }
}

/// Why one side of a pipe did not start.
#[derive(Debug, thiserror::Error)]
enum SpawnError {
    /// No program to run.
    #[error("empty command")]
    Empty,
    /// The program could not be started.
    #[error("cannot start {program}: {source}")]
    Start {
        /// argv\[0\].
        program: String,
        /// The OS's error.
        #[source]
        source: std::io::Error,
    },
}

fn spawn(argv: &[String], stdin: Stdio, stdout: Stdio) -> Result<Child, SpawnError> {
    let (program, args) = argv.split_first().ok_or(SpawnError::Empty)?;
    Command::new(program)
        .args(args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        // Its own process group, so a kill reaches an ssh's children too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SpawnError::Start {
            program: program.clone(),
            source,
        })
}

/// Runs `send` and `receive` (full argv each, prefixes included) with the sender's stdout copied
/// into the receiver's stdin, until both exit, `timeout` passes or `cancel` fires. `progress`, when
/// given, follows the byte count while it runs.
pub async fn pipe(
    send: &[String],
    receive: &[String],
    timeout: Duration,
    cancel: &CancellationToken,
    progress: Option<&AtomicU64>,
) -> Result<Transfer, PipeError> {
    let span = tracing::info_span!(
        "zfs.pipe",
        otel.name = "zfs send | zfs receive",
        zfs.send = %send.join(" "),
        zfs.receive = %receive.join(" "),
        bytes = tracing::field::Empty,
    );
    let result = pipe_inner(send, receive, timeout, cancel, progress)
        .instrument(span.clone())
        .await;
    span.record(
        "bytes",
        match &result {
            Ok(t) => t.bytes,
            Err(e) => e.bytes,
        },
    );
    result
}

async fn pipe_inner(
    send: &[String],
    receive: &[String],
    timeout: Duration,
    cancel: &CancellationToken,
    progress: Option<&AtomicU64>,
) -> Result<Transfer, PipeError> {
    let started = Instant::now();
    let local_failure = |local: String| PipeError {
        end: PipeEnd::Failed,
        bytes: 0,
        send_status: None,
        receive_status: None,
        send_stderr: String::new(),
        receive_stderr: String::new(),
        local: Some(local),
        send_pid: None,
    };
    // The receiver first: a sender with no reader would fail on its first write.
    let mut receiver =
        spawn(receive, Stdio::piped(), Stdio::null()).map_err(|e| local_failure(e.to_string()))?;
    let mut sender = match spawn(send, Stdio::null(), Stdio::piped()) {
        Ok(child) => child,
        Err(e) => {
            kill_group(receiver.id());
            let _ = receiver.wait().await;
            return Err(local_failure(e.to_string()));
        }
    };
    let (send_pid, receive_pid) = (sender.id(), receiver.id());
    let send_err = tokio::spawn(tail(sender.stderr.take()));
    let receive_err = tokio::spawn(tail(receiver.stderr.take()));
    let (Some(mut stream_out), Some(mut stream_in)) = (sender.stdout.take(), receiver.stdin.take())
    else {
        kill_group(send_pid);
        kill_group(receive_pid);
        return Err(local_failure("child pipes were not set up".into()));
    };
    // Default pipes hold 64 KiB: with proxflow between the two commands that is two small buffers
    // where `a | b` has one, and each side waits on the copy far more often. Best effort: an
    // unprivileged process may be capped below this (/proc/sys/fs/pipe-max-size).
    for fd in [stream_out.as_fd(), stream_in.as_fd()] {
        let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
    }

    let copied = AtomicU64::new(0);
    let counter = &copied;
    // Owns both pipe ends, so they close the moment the copy ends, however it ends: a sender
    // blocked on a full pipe to a receiver that died gets its broken pipe and exits.
    let copy = async move {
        let mut buf = vec![0u8; BUFFER_BYTES];
        loop {
            let n = stream_out.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            stream_in.write_all(&buf[..n]).await?;
            let total = counter.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
            if let Some(p) = progress {
                p.store(total, Ordering::Relaxed);
            }
        }
        // End of stream for the receiver.
        stream_in.shutdown().await?;
        drop(stream_in);
        Ok::<(), std::io::Error>(())
    };
    let work = async {
        let copy_result = copy.await;
        // A receiver that died makes the copy fail with a broken pipe; the sender then exits on its
        // own write error. Either way both are waited for, so their statuses are known.
        let send_status = sender.wait().await;
        let receive_status = receiver.wait().await;
        (copy_result, send_status, receive_status)
    };
    let ended = tokio::select! {
        outcome = work => Ok(outcome),
        _ = tokio::time::sleep(timeout) => Err(PipeEnd::TimedOut),
        _ = cancel.cancelled() => Err(PipeEnd::Cancelled),
    };
    let bytes = copied.load(Ordering::Relaxed);
    match ended {
        Ok((copy_result, send_status, receive_status)) => {
            let ok = matches!(&send_status, Ok(s) if s.success())
                && matches!(&receive_status, Ok(s) if s.success())
                && copy_result.is_ok();
            if ok {
                return Ok(Transfer {
                    bytes,
                    duration: started.elapsed(),
                });
            }
            Err(PipeError {
                end: PipeEnd::Failed,
                bytes,
                send_status: status_text(&send_status),
                receive_status: status_text(&receive_status),
                send_stderr: send_err.await.unwrap_or_default(),
                receive_stderr: receive_err.await.unwrap_or_default(),
                local: copy_result
                    .err()
                    .filter(|e| e.kind() != std::io::ErrorKind::BrokenPipe)
                    .map(|e| format!("copying the stream: {e}")),
                send_pid,
            })
        }
        Err(end) => {
            // The copy (and with it both pipe ends) is gone already: the receiver sees the end of
            // its stream even where the kill does not reach the process doing the receive (zfs-fuse
            // receives in its daemon).
            kill_group(send_pid);
            kill_group(receive_pid);
            let send_status = sender.wait().await;
            let receive_status = receiver.wait().await;
            tracing::warn!(bytes, ?end, "send | receive stopped");
            Err(PipeError {
                end,
                bytes,
                send_status: status_text(&send_status),
                receive_status: status_text(&receive_status),
                send_stderr: send_err.await.unwrap_or_default(),
                receive_stderr: receive_err.await.unwrap_or_default(),
                local: None,
                send_pid,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn copies_and_counts_every_byte() {
        let dir = std::env::temp_dir().join(format!("pf-pipe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("out");
        let progress = AtomicU64::new(0);
        let t = pipe(
            &sh("head -c 3000000 /dev/urandom"),
            &sh(&format!("cat > {}", out.display())),
            Duration::from_secs(30),
            &CancellationToken::new(),
            Some(&progress),
        )
        .await
        .unwrap();
        assert_eq!(t.bytes, 3_000_000);
        assert_eq!(progress.load(Ordering::Relaxed), 3_000_000);
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 3_000_000);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_failing_receiver_reports_both_sides() {
        let e = pipe(
            &sh("head -c 100000 /dev/zero"),
            &sh("head -c 10 >/dev/null; echo 'cannot receive: invalid backup stream' >&2; exit 1"),
            Duration::from_secs(30),
            &CancellationToken::new(),
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(e.end, PipeEnd::Failed);
        assert_eq!(e.receive_status.as_deref(), Some("exit 1"));
        assert!(e.to_string().contains("invalid backup stream"), "{e}");
        assert!(e.stderr().contains("invalid backup stream"));
    }

    #[tokio::test]
    async fn a_timeout_kills_both_groups_and_keeps_the_count() {
        let started = Instant::now();
        let e = pipe(
            // Sends a little, then would stall for a minute.
            &sh("head -c 5000 /dev/zero; sleep 60"),
            &sh("cat >/dev/null; sleep 60"),
            Duration::from_millis(500),
            &CancellationToken::new(),
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(e.end, PipeEnd::TimedOut);
        assert_eq!(e.bytes, 5000);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the sleeps were not killed"
        );
        assert_eq!(e.send_status.as_deref(), Some("killed by a signal"));
    }

    #[tokio::test]
    async fn cancelling_stops_a_transfer() {
        let cancel = CancellationToken::new();
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            trigger.cancel();
        });
        let e = pipe(
            &sh("sleep 60"),
            &sh("cat >/dev/null"),
            Duration::from_secs(60),
            &cancel,
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(e.end, PipeEnd::Cancelled);
    }

    #[tokio::test]
    async fn a_missing_program_is_a_local_failure() {
        let e = pipe(
            &["/nonexistent/zfs".to_owned()],
            &sh("cat >/dev/null"),
            Duration::from_secs(5),
            &CancellationToken::new(),
            None,
        )
        .await
        .unwrap_err();
        assert!(e.local.unwrap().contains("cannot start /nonexistent/zfs"));
    }
}
