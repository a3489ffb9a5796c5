//! A real Alertmanager delivering to the gateway: alerts posted to Alertmanager's API arrive on the
//! bus one message per alert, and with nats-server stopped the gateway answers 503 and Alertmanager's
//! own retries get every alert through once it is back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use proxflow_schemas::alert::AlertReceived;
use proxflow_schemas::names::{stream, subject};
use proxflow_testkit::TestNats;
use proxflow_testkit::alertmanager::TestAlertmanager;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "alertmanager-token-0123456789";

struct Rig {
    nats: TestNats,
    ctx: proxflow_runtime::ServiceContext,
    gateway: String,
    am: TestAlertmanager,
    stop: CancellationToken,
}

async fn rig() -> Rig {
    let nats = TestNats::start().unwrap();
    let ctx = nats.context("alertmanager-e2e").await.unwrap();
    let stop = CancellationToken::new();
    let gateway = proxflow_e2e::start_gateway(&ctx, "alertmanager", TOKEN, &stop).await;
    let am = TestAlertmanager::start(
        &format!("{gateway}/v1/alerts/alertmanager"),
        TOKEN,
        Duration::from_millis(500),
    )
    .unwrap();
    Rig {
        nats,
        ctx,
        gateway,
        am,
        stop,
    }
}

impl Rig {
    /// Fires alerts through Alertmanager's own API, as Prometheus does.
    async fn fire(&self, alerts: &[(&str, &str)]) {
        let body: Vec<_> = alerts
            .iter()
            .map(|(name, vmid)| {
                json!({"labels": {"alertname": name, "vmid": vmid, "severity": "critical"},
                       "annotations": {"summary": format!("{name} on {vmid}")}})
            })
            .collect();
        let r = reqwest::Client::new()
            .post(format!("{}/api/v2/alerts", self.am.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.status());
    }

    /// The (alertname, vmid) of every alert on the bus.
    async fn on_the_bus(&self) -> BTreeSet<(String, String)> {
        proxflow_e2e::stored::<AlertReceived>(
            &self.ctx.bus.js,
            stream::INGEST,
            &subject::ingest("alertmanager", "alert"),
        )
        .await
        .into_iter()
        .map(|a| (a.name().to_string(), a.labels["vmid"].clone()))
        .collect()
    }

    async fn until_on_the_bus(&self, want: &[(&str, &str)]) {
        let want: BTreeSet<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.on_the_bus().await;
            if got == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "on the bus {got:?}, wanted {want:?}\n{}",
                self.am.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How often the gateway refused a delivery with `outcome`.
    async fn refused(&self, outcome: &str) -> u64 {
        let page = reqwest::get(format!("{}/metrics", self.gateway))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let series =
            format!("proxflow_webhooks_total{{endpoint=\"alertmanager\",outcome=\"{outcome}\"}} ");
        page.lines()
            .find_map(|l| l.strip_prefix(&series))
            .map_or(0, |n| n.trim().parse().unwrap())
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_posted_to_alertmanager_arrive_one_message_each() {
    let r = rig().await;
    let alerts = [
        ("VMDown", "101"),
        ("VMDown", "102"),
        ("ZfsPoolFull", "rpool"),
    ];
    r.fire(&alerts).await;
    r.until_on_the_bus(&alerts).await;
    assert!(r.refused("accepted").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_nats_down_alertmanager_retries_until_every_alert_is_through() {
    let mut r = rig().await;
    r.nats.stop();
    let alerts = [("VMDown", "104"), ("ReplicationLag", "tank")];
    r.fire(&alerts).await;
    // Alertmanager's deliveries are answered 503 while the bus is down...
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.refused("unavailable").await == 0 {
        assert!(Instant::now() < deadline, "{}", r.am.log_tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(r.refused("accepted").await, 0);
    // ...and its own retries carry every alert through once it is back.
    r.nats.restart().unwrap();
    r.until_on_the_bus(&alerts).await;
}
