//! The simulator over real HTTP(S) for the test files: a simulator per test with short task
//! durations, requests with the token, task polling against a deadline, and the contract check of
//! every successful answer when a test finishes.
#![allow(clippy::unwrap_used, dead_code)]

use std::time::{Duration, Instant};

use proxflow_pve_sim::schema::ApiSchema;
use proxflow_pve_sim::{JournalEntry, RunningSim, SimConfig, TaskDurations, start};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn fast() -> TaskDurations {
    let ms = Duration::from_millis;
    TaskDurations {
        clone: ms(600),
        start: ms(20),
        shutdown: ms(20),
        stop: ms(10),
        reboot: ms(20),
        config: ms(10),
        resize: ms(10),
        snapshot: ms(20),
        delsnapshot: ms(10),
        rollback: ms(20),
        destroy: ms(20),
        aptupdate: ms(20),
        node_reboot: ms(300),
        guest_upgrade: ms(300),
        agent_boot: ms(400),
        auth_failure: ms(50),
        status_interval: Duration::ZERO,
    }
}

pub fn config(tls: bool) -> SimConfig {
    SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        tls,
        durations: fast(),
        ..SimConfig::default()
    }
}

pub struct Sim {
    pub sim: RunningSim,
    pub http: reqwest::Client,
    pub auth: String,
}

pub struct Answer {
    pub status: u16,
    pub body: Value,
}

pub async fn sim_with(config: SimConfig) -> Sim {
    let sim = match start(config).await {
        Ok(sim) => sim,
        Err(e) => panic!("simulator did not start: {e}"),
    };
    let auth = format!("PVEAPIToken={}={}", sim.token_id(), sim.token_secret());
    Sim {
        sim,
        http: reqwest::Client::new(),
        auth,
    }
}

pub async fn sim() -> Sim {
    sim_with(config(false)).await
}

impl Sim {
    pub fn url(&self, path: &str) -> String {
        format!("{}/api2/json{path}", self.sim.base_url())
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Answer {
        let res = req
            .header("Authorization", &self.auth)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        Answer { status, body }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn form(
        &self,
        method: reqwest::Method,
        path: &str,
        pairs: &[(&str, &str)],
    ) -> Answer {
        let body = serde_urlencoded::to_string(pairs).unwrap();
        self.send(
            self.http
                .request(method, self.url(path))
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body),
        )
        .await
    }

    pub async fn post(&self, path: &str, pairs: &[(&str, &str)]) -> Answer {
        self.form(reqwest::Method::POST, path, pairs).await
    }

    pub async fn put(&self, path: &str, pairs: &[(&str, &str)]) -> Answer {
        self.form(reqwest::Method::PUT, path, pairs).await
    }

    pub async fn json(&self, method: reqwest::Method, path: &str, body: Value) -> Answer {
        self.send(
            self.http
                .request(method, self.url(path))
                .header("Content-Type", "application/json")
                .body(body.to_string()),
        )
        .await
    }

    /// A `/_sim` control request with the token and an optional JSON body.
    pub async fn control(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Answer {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.sim.base_url()));
        if let Some(body) = body {
            req = req
                .header("Content-Type", "application/json")
                .body(body.to_string());
        }
        self.send(req).await
    }

    /// `GET /_sim/state`.
    pub async fn state(&self) -> Value {
        let a = self
            .control(reqwest::Method::GET, "/_sim/state", None)
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.body
    }

    pub async fn config(&self, vmid: u32) -> Value {
        let a = self.get(&format!("/nodes/pve1/qemu/{vmid}/config")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.body["data"].clone()
    }

    /// Polls the task until it stops (or the deadline passes) and returns its status.
    pub async fn wait(&self, upid: &Value) -> Value {
        let upid = upid
            .as_str()
            .unwrap_or_else(|| panic!("not a UPID: {upid}"));
        let path = format!("/nodes/pve1/tasks/{}/status", encode(upid));
        let deadline = Instant::now() + DEADLINE;
        loop {
            let a = self.get(&path).await;
            if a.status == 200 && a.body["data"]["status"] == "stopped" {
                return a.body["data"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "task {upid} did not finish: {}",
                a.body
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Starts a task and waits for it; returns the exit status.
    pub async fn run(&self, answer: Answer) -> String {
        assert_eq!(answer.status, 200, "{}", answer.body);
        let status = self.wait(&answer.body["data"]).await;
        status["exitstatus"].as_str().unwrap().to_owned()
    }

    pub async fn storage(&self, id: &str) -> (u64, u64) {
        let a = self.get(&format!("/nodes/pve1/storage/{id}/status")).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let d = &a.body["data"];
        (d["used"].as_u64().unwrap(), d["avail"].as_u64().unwrap())
    }

    /// Checks every successful answer of the run against the schema's `returns`, then stops.
    pub async fn finish(self) {
        let (schema, _) = match ApiSchema::locate() {
            Ok(found) => found,
            Err(e) => panic!("{e}"),
        };
        for entry in self.sim.handle().journal() {
            if entry.status != 200 {
                continue;
            }
            let template = entry.template.as_deref().unwrap();
            if let Err(errors) =
                schema.validate_returns(&entry.method, template, &entry.response["data"])
            {
                panic!(
                    "{} {template} answered outside its schema: {errors:?}",
                    entry.method
                );
            }
        }
        self.sim.shutdown().await;
    }

    pub fn last_journal(&self) -> JournalEntry {
        self.sim.handle().journal().pop().unwrap()
    }
}

pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A raw HTTP/1.1 exchange, for the status line (reqwest does not expose reason phrases).
pub async fn raw(sim: &Sim, request: &str) -> (String, String) {
    let addr = sim.sim.base_url().trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).await.unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

pub fn mac_of(net: &Value) -> String {
    let first = net.as_str().unwrap().split(',').next().unwrap();
    first.split_once('=').unwrap().1.to_owned()
}
