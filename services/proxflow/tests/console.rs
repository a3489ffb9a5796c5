//! The operator's console in a real browser: headless Chromium (over chromedriver) drives `/ui` of
//! a running `proxflow dev` — log in with the dev token, read the first screen against the
//! simulator's own numbers, open a provision's detail and its trace waterfall, approve a waiting
//! patch plan — and the session rules hold for a client without a browser: no session, no page;
//! no CSRF token, no decision. Screenshots of every page go to `target/console/`.

#[path = "support/cli.rs"]
mod cli;
#[path = "support/dev.rs"]
mod dev;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use dev::Dev;
use proxflow_testkit::webdriver::Browser;

/// What the test needs from a running dev: its gateway and credentials, its simulator.
struct Running {
    dev: Dev,
    gateway: String,
    token: String,
    secret: String,
    _state: tempfile::TempDir,
}

/// `proxflow dev` on its defaults, but without the ZFS pools (this test looks at the console, not
/// at replication) and with capacity polled every 2 s.
fn start_dev() -> Running {
    let state = tempfile::tempdir().expect("tempdir");
    let pool = format!("pft-console-nopool-{}", std::process::id());
    let dev = Dev::start(
        state.path(),
        &[
            ("PROXFLOW_DEV__ZFS_SOURCE", format!("{pool}/dev")),
            ("PROXFLOW_DEV__ZFS_TARGET", format!("{pool}/copy")),
            ("PROXFLOW_CAPACITY__INTERVAL", "2s".into()),
            ("PROXFLOW_CAPACITY__MAX_GAP", "10s".into()),
        ],
    );
    let gateway = dev.url("gateway");
    let token = dev
        .credential("PROXFLOW_GATEWAY__BEARER_TOKENS__DEV")
        .expect("dev token");
    let secret = dev
        .credential("PROXFLOW_GATEWAY__WEBHOOK_SECRETS")
        .expect("webhook secret");
    let console = dev.line("console");
    assert!(
        console.starts_with(&format!("{gateway}/ui")) && console.contains(&token),
        "the console line names /ui and the login token: {console}"
    );
    Running {
        dev,
        gateway,
        token,
        secret,
        _state: state,
    }
}

/// Polls `check` until it gives a value, or fails the test with `what` after `limit`.
async fn until<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn workflow(http: &reqwest::Client, dev: &Running, id: &str) -> serde_json::Value {
    http.get(format!("{}/v1/workflows/{id}", dev.gateway))
        .bearer_auth(&dev.token)
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json")
}

fn screenshots() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/console"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_operator_logs_in_reads_the_first_screen_follows_a_provision_and_approves_a_plan() {
    let dev = start_dev();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");

    // A provision through the signed webhook, to its end.
    let secret = proxflow_runtime::config::Secret::new(dev.secret.clone());
    let body = br#"{"name": "k3s-console"}"#;
    let mut post = http
        .post(format!("{}/v1/provision", dev.gateway))
        .header("content-type", "application/json")
        .body(body.to_vec());
    for (name, value) in proxflow_gateway::webhook::SignedHeaders::new(&secret, body)
        .expect("secret")
        .pairs()
    {
        post = post.header(name, value);
    }
    let accepted: serde_json::Value = post
        .send()
        .await
        .expect("provision")
        .json()
        .await
        .expect("json");
    let provision = accepted["workflow_id"].as_str().expect("id").to_owned();
    let done = until("the provision ends", Duration::from_secs(90), || async {
        let r = workflow(&http, &dev, &provision).await;
        matches!(r["state"].as_str(), Some("succeeded" | "failed")).then_some(r)
    })
    .await;
    assert_eq!(done["state"], "succeeded", "{done}");

    // A patch run that stops at its approval.
    let run: serde_json::Value = http
        .post(format!("{}/v1/patch/runs", dev.gateway))
        .bearer_auth(&dev.token)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("patch run")
        .json()
        .await
        .expect("json");
    let patch = run["workflow_id"].as_str().expect("run id").to_owned();
    until(
        "the patch run waits for a decision",
        Duration::from_secs(120),
        || async {
            let r = workflow(&http, &dev, &patch).await;
            assert!(
                !matches!(
                    r["state"].as_str(),
                    Some("failed" | "succeeded" | "cancelled")
                ),
                "the patch run ended before asking: {r}"
            );
            let asks = r["state"] == "waiting"
                && r["data"]["approval_hash"].is_string()
                && r["data"]["paused"].is_null();
            asks.then_some(())
        },
    )
    .await;

    // The simulator's own count of running VMs, to compare with the page.
    let sim = dev.dev.line("pve-sim").to_owned();
    let mut words = sim.split_whitespace();
    let sim_url = words
        .next()
        .expect("url")
        .trim_end_matches("/api2/json")
        .to_owned();
    let fingerprint = words
        .nth(1)
        .expect("fingerprint")
        .trim_end_matches(')')
        .to_owned();
    let pve = proxflow_pve::PveClient::new(&proxflow_pve::PveConfig {
        url: sim_url,
        fingerprint: Some(fingerprint),
        token_secret: proxflow_runtime::config::Secret::new(proxflow_pve_sim::DEV_TOKEN_SECRET),
        ..proxflow_pve::PveConfig::default()
    })
    .expect("pve client");

    let browser = Browser::start(1280, 1000).await.expect("headless chromium");
    let shots = screenshots();

    // Without a session, the console sends the browser to the login form.
    browser
        .goto(&format!("{}/ui", dev.gateway))
        .await
        .expect("open /ui");
    assert!(
        browser.url().await.expect("url").ends_with("/ui/login"),
        "not redirected to the login form"
    );
    browser
        .screenshot(&shots.join("login.png"))
        .await
        .expect("shot");
    browser
        .find("#token")
        .await
        .expect("token field")
        .type_text(&dev.token)
        .await
        .expect("type");
    browser
        .find("#login")
        .await
        .expect("login button")
        .click()
        .await
        .expect("click");
    assert!(
        browser.url().await.expect("url").ends_with("/ui"),
        "login did not land on the overview"
    );

    // The first screen, once a capacity sample counts the provisioned VM.
    let running = pve
        .list_vms()
        .await
        .expect("vms")
        .iter()
        .filter(|v| v.status == "running" && !v.template)
        .count();
    let text = until(
        "the overview counts the simulator's running VMs",
        Duration::from_secs(30),
        || async {
            browser.goto(&format!("{}/ui", dev.gateway)).await.ok()?;
            let text = browser.find("#capacity").await.ok()?.text().await.ok()?;
            text.contains(&format!("{running} running VMs"))
                .then_some(text)
        },
    )
    .await;
    assert!(text.contains("CPU") && text.contains("/ 70 %"), "{text}");
    let commitment = browser
        .find("#gauge-commitment")
        .await
        .expect("commitment gauge");
    assert_eq!(
        commitment
            .attribute("data-limit")
            .await
            .expect("attr")
            .as_deref(),
        Some("1.50")
    );
    let value: f64 = commitment
        .attribute("data-value")
        .await
        .expect("attr")
        .expect("value")
        .parse()
        .expect("number");
    assert!(value > 0.0, "a running VM commits memory: {value}");
    let waiting = match browser
        .find(&format!("#approvals tr[data-run=\"{patch}\"]"))
        .await
    {
        Ok(row) => row,
        Err(e) => panic!(
            "the waiting plan is not listed ({e}); the run: {}",
            workflow(&http, &dev, &patch).await
        ),
    };
    assert!(waiting.text().await.expect("text").contains(&patch));
    assert!(
        browser.find("#stale").await.is_err(),
        "no stale banner while samples arrive"
    );
    let page = browser
        .execute("return document.documentElement.outerHTML")
        .await
        .expect("html");
    assert!(
        !page.as_str().unwrap_or_default().contains(&dev.token),
        "the token is never rendered"
    );
    browser
        .screenshot(&shots.join("overview.png"))
        .await
        .expect("shot");

    // The provision in the list, its detail and its trace.
    browser
        .goto(&format!("{}/ui/workflows?kind=provision", dev.gateway))
        .await
        .expect("list");
    browser
        .find(&format!("tr[data-id=\"{provision}\"] a"))
        .await
        .expect("the provision is listed")
        .click()
        .await
        .expect("open it");
    assert_eq!(
        browser
            .find("#workflow-id")
            .await
            .expect("id")
            .text()
            .await
            .expect("text"),
        provision
    );
    let steps = browser
        .find_all("#steps tr[data-step]")
        .await
        .expect("steps");
    assert!(steps.len() >= 5, "steps shown: {}", steps.len());
    assert!(browser.find("#steps tr[data-step=\"clone\"]").await.is_ok());
    let spans = until(
        "the trace's spans reach the page",
        Duration::from_secs(30),
        || async {
            browser.goto(&browser.url().await.ok()?).await.ok()?;
            let spans = browser.find_all("#waterfall [data-span]").await.ok()?;
            let mut services = Vec::new();
            for s in &spans {
                services.push(s.attribute("data-service").await.ok()??);
            }
            (services.iter().any(|s| s == "gateway") && services.iter().any(|s| s == "provisioner"))
                .then_some(spans.len())
        },
    )
    .await;
    assert!(spans > 5, "{spans} spans");
    browser
        .screenshot(&shots.join("workflow.png"))
        .await
        .expect("shot");

    // Approving the waiting plan from its page.
    browser
        .goto(&format!("{}/ui/workflows/{patch}", dev.gateway))
        .await
        .expect("patch run page");
    browser
        .screenshot(&shots.join("approval.png"))
        .await
        .expect("shot");
    // The session cookie, for the checks without a browser below.
    let cookie = browser.cookie("pf_session").await.expect("session cookie");
    let cookie = format!("pf_session={}", cookie["value"].as_str().expect("value"));
    let plan = workflow(&http, &dev, &patch).await["data"]["approval_hash"]
        .as_str()
        .expect("hash")
        .to_owned();

    // A POST with the session but without its CSRF token decides nothing.
    let forged = http
        .post(format!("{}/ui/workflows/{patch}/decision", dev.gateway))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("verdict=approve&plan={plan}"))
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status(), 403);
    assert_eq!(workflow(&http, &dev, &patch).await["state"], "waiting");
    // Nor one without a session.
    let anonymous = http
        .post(format!("{}/ui/workflows/{patch}/decision", dev.gateway))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("verdict=approve&plan={plan}&csrf=x"))
        .send()
        .await
        .expect("post");
    assert_eq!(anonymous.status(), 401);
    // A page without a session is a redirect to the login form.
    let redirect = http
        .get(format!("{}/ui/workflows", dev.gateway))
        .send()
        .await
        .expect("get");
    assert_eq!(redirect.status(), 303);
    assert_eq!(redirect.headers()["location"], "/ui/login");

    browser
        .find("#approve")
        .await
        .expect("approve button")
        .click()
        .await
        .expect("click");
    let decided = until(
        "the approval reaches the run",
        Duration::from_secs(60),
        || async {
            let r = workflow(&http, &dev, &patch).await;
            (r["state"] != "waiting" || r["data"]["decision"].is_object()).then_some(r)
        },
    )
    .await;
    assert_ne!(decided["state"], "failed", "{decided}");
    browser
        .screenshot(&shots.join("approved.png"))
        .await
        .expect("shot");

    // The same first screen on a phone: nothing wider than the screen.
    browser.resize(390, 844).await.expect("resize");
    browser
        .goto(&format!("{}/ui", dev.gateway))
        .await
        .expect("overview");
    let fits = browser
        .execute("return document.documentElement.scrollWidth <= window.innerWidth")
        .await
        .expect("width");
    assert_eq!(
        fits,
        serde_json::Value::Bool(true),
        "the overview overflows a phone"
    );
    browser
        .screenshot(&shots.join("overview-phone.png"))
        .await
        .expect("shot");
    browser.quit().await;
    dev.dev.stop();
}
