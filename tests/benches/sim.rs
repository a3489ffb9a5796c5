//! `just bench`: the Proxmox simulator's memory after 1,000 provisions (it must stay bounded: the
//! request journal is capped in entries and bytes, finished tasks are pruned). The simulator runs as
//! its own process (`pf-test-sim`, HTTPS, tasks at once); each provision is the provisioner's
//! sequence of calls through `PveClient` — clone, config, resize, start, guest agent address, status
//! — then stop and destroy (so the VMs do not accumulate), 16 at a time. RSS is printed at start and
//! after each 250 provisions; the journal fills its 10,000 entries / 16 MiB within the first 500.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use proxflow_pve::{CloneSpec, ConfigChange, PveClient, PveConfig};
use proxflow_runtime::config::Secret;

const PROVISIONS: u32 = 1_000;
const CONCURRENCY: u32 = 16;

struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// One provision's calls, as the provisioner makes them.
async fn provision(client: &PveClient, vmid: u32) -> anyhow::Result<()> {
    let spec = CloneSpec {
        newid: vmid,
        name: Some(format!("bench-{vmid}")),
        ..CloneSpec::default()
    };
    client
        .wait_task(&client.clone_vm(9000, &spec).await?, None)
        .await?;
    let mut change = ConfigChange::default();
    for (key, value) in [("cores", "4"), ("memory", "8192"), ("ipconfig0", "ip=dhcp")] {
        change.set.insert(key.into(), value.into());
    }
    client.update_config(vmid, &change).await?;
    let resized = client.resize_disk(vmid, "scsi0", "40G", None).await?;
    client.wait_task(&resized, None).await?;
    client
        .wait_task(&client.start_vm(vmid).await?, None)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.agent_network_interfaces(vmid).await.is_err() {
        anyhow::ensure!(Instant::now() < deadline, "VM {vmid}: no agent");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    client.vm_status(vmid).await?;
    // Gone again, so what grows is the simulator's bookkeeping (journal, tasks), not its VMs.
    client
        .wait_task(&client.stop_vm(vmid, None).await?, None)
        .await?;
    client
        .wait_task(&client.destroy_vm(vmid, true).await?, None)
        .await?;
    Ok(())
}

fn main() {
    proxflow_e2e::bench_main(|| async {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pf-test-sim"))
            .env("RUST_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pf-test-sim");
        let line = BufReader::new(child.stdout.take().expect("stdout"))
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("listening ").map(str::to_owned))
            .expect("a listening line");
        let sim = Sim(child);
        let pid = sim.0.id();
        let (url, fingerprint) = line.split_once(' ').expect("url and fingerprint");
        let client = PveClient::new(&PveConfig {
            url: url.to_owned(),
            token_id: "root@pam!proxflow".into(),
            token_secret: Secret::new("proxflow-dev-secret"),
            fingerprint: Some(fingerprint.to_owned()),
            task_poll_max: Duration::from_millis(5),
            ..PveConfig::default()
        })
        .expect("client");
        client.vm_status(101).await.expect("simulator answers");
        println!(
            "pve-sim (own process, HTTPS) through {PROVISIONS} provisions, {CONCURRENCY} at a time:"
        );
        println!("  at start:           RSS {:>6.1} MiB", rss_mib(pid));
        let started = Instant::now();
        for batch in 0..4 {
            let first = 10_000 + batch * (PROVISIONS / 4);
            let mut set = tokio::task::JoinSet::new();
            for worker in 0..CONCURRENCY {
                let client = client.clone();
                set.spawn(async move {
                    let mut vmid = first + worker;
                    while vmid < first + PROVISIONS / 4 {
                        provision(&client, vmid).await?;
                        vmid += CONCURRENCY;
                    }
                    anyhow::Ok(())
                });
            }
            while let Some(done) = set.join_next().await {
                done.expect("joins").expect("provision");
            }
            println!(
                "  after {:>5} provisions: RSS {:>6.1} MiB",
                (batch + 1) * (PROVISIONS / 4),
                rss_mib(pid)
            );
        }
        println!(
            "  {PROVISIONS} provisions in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    });
}
