//! The client against a scripted HTTP server, for wire behaviour the simulator deliberately cannot
//! produce: the error forms of *older* pveproxy releases (reason phrase only, no body `message`), a
//! request that takes effect but whose answer never arrives, and connection failures. This is a mock
//! by necessity; everything else is tested against `proxflow-pve-sim`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use proxflow_pve::{ErrorKind, PveClient, PveConfig, ShutdownOptions};
use proxflow_runtime::config::Secret;
use serde_json::json;

const UPID: &str = "UPID:pve1:0000ABCD:00C4B2D0:6564A1B2:qmshutdown:101:root@pam!proxflow:";

#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<(String, String, Option<String>)>>,
    posts: AtomicU32,
}

fn reply(status: u16, reason: &'static str, body: Option<serde_json::Value>) -> Response {
    let mut response = match body {
        Some(b) => (StatusCode::from_u16(status).unwrap(), b.to_string()).into_response(),
        None => StatusCode::from_u16(status).unwrap().into_response(),
    };
    response
        .extensions_mut()
        .insert(hyper::ext::ReasonPhrase::from_static(reason.as_bytes()));
    response
}

async fn handler(State(seen): State<Arc<Seen>>, headers: HeaderMap, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let method = req.method().to_string();
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    seen.requests
        .lock()
        .unwrap()
        .push((method.clone(), path.clone(), auth));
    match (method.as_str(), path.as_str()) {
        ("GET", "/api2/json/old/500") => {
            reply(500, "VM is locked (backup)", Some(json!({"data": null})))
        }
        ("GET", "/api2/json/new/500") => reply(
            500,
            "unable to create VM 101",
            Some(
                json!({"data": null, "message": "unable to create VM 101: config file already exists\n"}),
            ),
        ),
        ("GET", "/api2/json/denied") => reply(
            403,
            "Permission check failed (/vms/101, VM.Audit)",
            Some(json!({"data": null})),
        ),
        ("GET", "/api2/json/noauth") => reply(401, "Authentication failed!", None),
        ("GET", "/api2/json/nope") => reply(
            501,
            "Method 'GET /nope' not implemented",
            Some(json!({"data": null})),
        ),
        ("GET", "/api2/json/unavailable") => reply(503, "Service Unavailable", None),
        ("GET", "/api2/json/garbage") => (StatusCode::OK, "<html>").into_response(),
        // The shutdown takes effect, but the answer arrives after the client gave up.
        ("POST", "/api2/json/nodes/pve1/qemu/101/status/shutdown") => {
            seen.posts.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(5)).await;
            reply(200, "OK", Some(json!({ "data": UPID })))
        }
        ("GET", "/api2/json/nodes/pve1/tasks") => reply(
            200,
            "OK",
            Some(json!({"data": [
                {"upid": UPID, "type": "qmshutdown", "id": "101", "user": "root@pam!proxflow",
                 "starttime": 4_000_000_000u64, "node": "pve1", "pid": 43981, "pstart": 12890832}
            ]})),
        ),
        _ => reply(404, "Not Found", None),
    }
}

async fn server() -> (String, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let app = Router::new().fallback(handler).with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), seen)
}

fn config(url: &str) -> PveConfig {
    PveConfig {
        url: url.into(),
        token_secret: Secret::new("8d7e5c1f-0000-4a4a-9b9b-secretsecret"),
        retry_attempts: 3,
        retry_base: Duration::from_millis(5),
        retry_max: Duration::from_millis(20),
        request_timeout: Duration::from_millis(500),
        ..PveConfig::default()
    }
}

#[tokio::test]
async fn decodes_every_error_form() {
    let (url, seen) = server().await;
    let client = PveClient::new(&config(&url)).unwrap();
    let get = |path: &'static str| {
        let client = client.clone();
        async move {
            client
                .call_value(reqwest::Method::GET, path, &proxflow_pve::Params::new())
                .await
                .expect_err(path)
        }
    };

    let old = get("/old/500").await;
    assert_eq!((old.kind, old.status), (ErrorKind::Locked, Some(500)));
    assert_eq!(
        old.message, "VM is locked (backup)",
        "reason phrase when the body has no message"
    );

    let new = get("/new/500").await;
    assert_eq!(new.kind, ErrorKind::AlreadyExists);
    assert_eq!(
        new.message,
        "unable to create VM 101: config file already exists"
    );

    let denied = get("/denied").await;
    assert_eq!(denied.kind, ErrorKind::Permission);
    assert!(denied.message.contains("VM.Audit"));

    let noauth = get("/noauth").await;
    assert_eq!(
        (noauth.kind, noauth.status),
        (ErrorKind::Unauthorized, Some(401))
    );

    assert_eq!(get("/nope").await.kind, ErrorKind::NotImplemented);
    assert_eq!(get("/garbage").await.kind, ErrorKind::Decode);

    // 503 is transient: retried up to retry_attempts, then reported as Transient.
    let before = seen.requests.lock().unwrap().len();
    assert_eq!(get("/unavailable").await.kind, ErrorKind::Transient);
    assert_eq!(seen.requests.lock().unwrap().len() - before, 3);

    // The token went out in Proxmox's header format.
    let auth = seen.requests.lock().unwrap()[0].2.clone().unwrap();
    assert_eq!(
        auth,
        "PVEAPIToken=root@pam!proxflow=8d7e5c1f-0000-4a4a-9b9b-secretsecret"
    );
}

#[tokio::test]
async fn an_unanswered_post_is_resolved_from_the_task_list_not_resent() {
    let (url, seen) = server().await;
    let client = PveClient::new(&config(&url)).unwrap();
    let upid = client
        .shutdown_vm(101, ShutdownOptions::default())
        .await
        .expect("the task that did start is adopted");
    assert_eq!(upid.as_str(), UPID);
    assert_eq!(
        seen.posts.load(Ordering::SeqCst),
        1,
        "the shutdown was sent once"
    );
    let asked_tasks = seen
        .requests
        .lock()
        .unwrap()
        .iter()
        .any(|(m, p, _)| m == "GET" && p == "/api2/json/nodes/pve1/tasks");
    assert!(asked_tasks);
}

#[tokio::test]
async fn connection_refused_is_retried_then_transient() {
    // Bind and drop a listener so the port is (almost certainly) closed.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let client = PveClient::new(&config(&format!("http://127.0.0.1:{port}"))).unwrap();
    let err = client.next_id().await.expect_err("nothing listens");
    assert_eq!(err.kind, ErrorKind::Transient);
    assert!(err.to_string().contains("/cluster/nextid"), "{err}");
}
