//! Test fixture: a `proxflow-pve-sim` on a free port and a client for it, plus the contract check.
//!
//! The contract check runs when a fixture is dropped: every request the simulator received during the
//! test (its journal) is validated against the official Proxmox VE 8 API schema — path, method and every
//! parameter — and every successful response against the schema's `returns`, independently of the
//! simulator's own validation. A test that sends an invalid request on purpose says how many with
//! [`Fixture::expect_rejected`]. If the schema file cannot be found the fixture panics with the paths it
//! tried: this test suite never passes without the contract.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, OnceLock};

use proxflow_pve::PveClient;
use proxflow_pve_sim::schema::ApiSchema;
use proxflow_pve_sim::{JournalEntry, RunningSim, SimConfig, SimHandle};

/// The official schema, loaded once per test binary.
pub fn schema() -> Arc<ApiSchema> {
    static SCHEMA: OnceLock<Arc<ApiSchema>> = OnceLock::new();
    SCHEMA
        .get_or_init(|| match ApiSchema::locate() {
            Ok((schema, _)) => Arc::new(schema),
            Err(e) => panic!("the Proxmox API contract cannot be checked: {e}"),
        })
        .clone()
}

pub use proxflow_testkit::pve::{client_config, sim_config};

pub struct Fixture {
    pub sim: Option<RunningSim>,
    pub handle: SimHandle,
    pub client: PveClient,
    rejected_expected: usize,
}

impl Fixture {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut SimConfig)) -> Self {
        let schema = schema(); // fail first, and loudly, without the contract
        drop(schema);
        let mut config = sim_config();
        tweak(&mut config);
        let sim = proxflow_pve_sim::start(config)
            .await
            .expect("simulator starts");
        let client = PveClient::new(&client_config(&sim)).expect("client");
        Self {
            handle: sim.handle(),
            client,
            sim: Some(sim),
            rejected_expected: 0,
        }
    }

    /// This test sends `n` requests the schema rejects, on purpose.
    pub fn expect_rejected(&mut self, n: usize) {
        self.rejected_expected += n;
    }

    pub fn journal(&self) -> Vec<JournalEntry> {
        self.handle.journal()
    }
}

/// Schema violations in a journal: (entry, problem).
pub fn contract_violations(journal: &[JournalEntry]) -> Vec<String> {
    let schema = schema();
    let mut problems = Vec::new();
    for e in journal {
        let what = format!("{} {}", e.method, e.path);
        let route = match schema.route(&e.method, &e.path) {
            Ok(r) => r,
            Err(err) => {
                problems.push(format!("{what}: {err}"));
                continue;
            }
        };
        let mut params = e.params.clone();
        for (k, v) in route.path_params {
            params.entry(k).or_insert(v);
        }
        if let Err(fields) = schema.validate_params(&e.method, &route.template, &params) {
            problems.push(format!("{what}: parameters {fields:?}"));
        }
        if (200..300).contains(&e.status) {
            let data = e.response.get("data").cloned().unwrap_or_default();
            if let Err(errs) = schema.validate_returns(&e.method, &route.template, &data) {
                problems.push(format!("{what}: response {errs:?}"));
            }
        }
    }
    problems
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        let journal = self.handle.journal();
        assert!(
            !journal.is_empty(),
            "the simulator journal is empty: nothing was checked"
        );
        let problems = contract_violations(&journal);
        assert_eq!(
            problems.len(),
            self.rejected_expected,
            "requests or responses outside the official Proxmox VE 8 API schema:\n  {}",
            problems.join("\n  ")
        );
    }
}
