//! The runtime across real process boundaries: SIGTERM while a handler runs, and a handler that crashes
//! its process. Uses the `pf-test-worker` binary of this package.

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use proxflow_e2e::{Probe, dead_letters, next_event};
use proxflow_schemas::events::{DeadLetter, DeadLetterReason};
use proxflow_testkit::TestNats;

const WAIT: Duration = Duration::from_secs(15);

/// A worker process and its stdout lines.
struct Worker {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Worker {
    fn start(nats: &TestNats, durable: &str, topic: &str, mode: &str, max_deliver: u32) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pf-test-worker"))
            .env("PF_NATS_URL", nats.url())
            .env("PF_DURABLE", durable)
            .env("PF_TOPIC", topic)
            .env("PF_MODE", mode)
            .env("PF_MAX_DELIVER", max_deliver.to_string())
            .env("PF_ACK_WAIT_MS", "1000")
            .env("PF_GRACE_MS", "300")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("worker spawns");
        let stdout: ChildStdout = child.stdout.take().expect("stdout piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let worker = Self { child, lines };
        worker.expect_line("ready");
        worker
    }

    fn expect_line(&self, wanted: &str) {
        let line = self
            .lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("worker printed no {wanted:?} within {WAIT:?}"));
        assert_eq!(line, wanted);
    }

    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    fn wait(self) -> std::process::ExitStatus {
        self.finish().0
    }

    /// Waits for the exit, then returns the status and every line printed that was not read yet.
    fn finish(mut self) -> (std::process::ExitStatus, Vec<String>) {
        let deadline = std::time::Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(std::time::Instant::now() < deadline, "worker did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        // The reader thread ends at EOF, which follows the exit: the channel then disconnects.
        let mut rest = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(WAIT) {
            rest.push(line);
        }
        (status, rest)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sigterm_during_a_handler_does_not_lose_the_message() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("publisher").await.expect("ctx");

    let first = Worker::start(&nats, "term-worker", "term", "hang", 5);
    ctx.bus
        .publisher
        .publish(&Probe::new("term", "s-1"))
        .await
        .expect("published");
    first.expect_line("handling s-1 1");
    first.sigterm();
    let status = first.wait();
    assert!(status.success(), "worker exited with {status} on SIGTERM");

    // The handler outlived the grace period, so its message was handed back, not dropped.
    let second = Worker::start(&nats, "term-worker", "term", "ack", 5);
    second.expect_line("handling s-1 2");
    second.expect_line("handled s-1 2");
    second.sigterm();
    assert!(second.wait().success());
}

#[tokio::test]
async fn a_message_that_crashes_its_worker_is_dead_lettered_when_it_returns() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("publisher").await.expect("ctx");
    let mut letters = dead_letters(&ctx, "crash-worker").await;

    let crashing = Worker::start(&nats, "crash-worker", "crash", "abort", 1);
    ctx.bus
        .publisher
        .publish(&Probe::new("crash", "c-1"))
        .await
        .expect("published");
    crashing.expect_line("handling c-1 1");
    assert!(!crashing.wait().success(), "the worker was meant to crash");

    // Redelivered after ack_wait to a healthy worker: past max_deliver, it is parked, not retried.
    let healthy = Worker::start(&nats, "crash-worker", "crash", "ack", 1);
    let letter: DeadLetter = next_event(&mut letters, WAIT).await;
    assert_eq!(letter.reason, DeadLetterReason::RetriesExhausted);
    assert_eq!(letter.deliveries, 2);
    assert!(letter.detail.contains("crashed"), "{}", letter.detail);
    healthy.sigterm();
    let (status, printed) = healthy.finish();
    assert!(status.success());
    assert!(
        printed.iter().all(|line| !line.starts_with("handling c-1")),
        "the handler ran again for a message past max_deliver: {printed:?}"
    );
}
