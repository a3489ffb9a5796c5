//! The console's rules over real HTTP, without a browser (the browser test is
//! `services/proxflow/tests/console.rs`): what a client without a session, with a forged one, with
//! a stale login form or with bad input gets, and the headers every page carries.

use std::collections::BTreeMap;

use proxflow_runtime::config::Secret;
use proxflow_testkit::TestNats;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "ops-console-token-0123456789";

struct Running {
    base: String,
    http: reqwest::Client,
    stop: CancellationToken,
    _nats: TestNats,
}

async fn start() -> Running {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("gateway").await.expect("ctx");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    tokio::spawn(proxflow_gateway::run(
        ctx,
        proxflow_gateway::GatewaySettings {
            console: Default::default(),
            config: proxflow_gateway::GatewayConfig {
                bearer_tokens: BTreeMap::from([("ops".to_owned(), Secret::new(TOKEN))]),
                ..Default::default()
            },
            profiles: proxflow_platform::Profiles::default(),
            listener,
            approvers: vec!["ops".into()],
        },
        stop.clone(),
    ));
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| !r.status().is_success())
        .unwrap_or(true)
    {
        assert!(std::time::Instant::now() < deadline, "gateway not ready");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    Running {
        base,
        http,
        stop,
        _nats: nats,
    }
}

fn set_cookie(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(str::to_owned)
}

/// The login form: its double-submit cookie pair and field.
async fn login_form(r: &Running) -> (String, String) {
    let form = r
        .http
        .get(format!("{}/ui/login", r.base))
        .send()
        .await
        .expect("form");
    assert_eq!(form.status(), 200);
    let cookie = set_cookie(&form, "pf_login").expect("login cookie");
    let pair = cookie.split(';').next().expect("pair").to_owned();
    let field = pair.trim_start_matches("pf_login=").to_owned();
    (pair, field)
}

async fn post_login(
    r: &Running,
    cookie: Option<&str>,
    token: &str,
    field: &str,
) -> reqwest::Response {
    let mut request = r
        .http
        .post(format!("{}/ui/login", r.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(serde_urlencoded::to_string([("token", token), ("form", field)]).expect("form"));
    if let Some(c) = cookie {
        request = request.header("cookie", c);
    }
    request.send().await.expect("login")
}

#[tokio::test]
async fn without_a_session_every_page_is_a_redirect_and_every_post_a_refusal() {
    let r = start().await;
    for path in ["/ui", "/ui/workflows", "/ui/workflows/prov-123"] {
        let page = r
            .http
            .get(format!("{}{path}", r.base))
            .send()
            .await
            .expect("get");
        assert_eq!(page.status(), 303, "{path}");
        assert_eq!(page.headers()["location"], "/ui/login", "{path}");
    }
    let post = r
        .http
        .post(format!("{}/ui/workflows/patch-x/decision", r.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("verdict=approve&plan=abcdef012345&csrf=x")
        .send()
        .await
        .expect("post");
    assert_eq!(post.status(), 401);
    // A forged session (right shape, wrong MAC) is no session.
    let forged = r
        .http
        .get(format!("{}/ui", r.base))
        .header(
            "cookie",
            format!(
                "pf_session=ops.{}.{}.{}",
                i64::MAX,
                "0".repeat(32),
                "0".repeat(64)
            ),
        )
        .send()
        .await
        .expect("get");
    assert_eq!(forged.status(), 303);
    r.stop.cancel();
}

#[tokio::test]
async fn logging_in_takes_a_configured_token_and_this_browsers_login_form() {
    let r = start().await;
    let (cookie, field) = login_form(&r).await;

    let wrong = post_login(&r, Some(&cookie), "not-a-token", &field).await;
    assert_eq!(wrong.status(), 401);
    let text = wrong.text().await.expect("body");
    assert!(text.contains("not one of gateway.bearer_tokens"), "{text}");
    assert!(
        !text.contains("not-a-token"),
        "a presented token is never echoed"
    );

    // The form's field without its cookie (another site posting the form): refused.
    let cross = post_login(&r, None, TOKEN, &field).await;
    assert_eq!(cross.status(), 403);
    assert!(set_cookie(&cross, "pf_session").is_none());

    let ok = post_login(&r, Some(&cookie), TOKEN, &field).await;
    assert_eq!(ok.status(), 303);
    assert_eq!(ok.headers()["location"], "/ui");
    let session = set_cookie(&ok, "pf_session").expect("session cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age="] {
        assert!(session.contains(attribute), "{session}");
    }
    assert!(!session.contains(TOKEN));
    let session = session.split(';').next().expect("pair").to_owned();

    let page = r
        .http
        .get(format!("{}/ui", r.base))
        .header("cookie", &session)
        .send()
        .await
        .expect("overview");
    let status = page.status();
    let headers = page.headers().clone();
    let html = page.text().await.expect("html");
    assert_eq!(status, 200, "{html}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .expect("ascii")
            .contains("default-src 'none'")
    );
    assert!(
        html.contains("id=\"capacity\"") || html.contains("id=\"stale\""),
        "{html}"
    );
    assert!(!html.contains(TOKEN), "the token is never rendered");
    assert!(!html.contains("<script"), "no script, no external asset");

    // Logging out needs the session's CSRF token too.
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("csrf field")
        .to_owned();
    let no_csrf = r
        .http
        .post(format!("{}/ui/logout", r.base))
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("csrf=wrong")
        .send()
        .await
        .expect("logout");
    assert_eq!(no_csrf.status(), 403);
    let out = r
        .http
        .post(format!("{}/ui/logout", r.base))
        .header("cookie", &session)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .expect("logout");
    assert_eq!(out.status(), 303);
    assert!(
        set_cookie(&out, "pf_session").is_some_and(|c| c.contains("Max-Age=0")),
        "the browser is told to drop the session"
    );
    r.stop.cancel();
}

#[tokio::test]
async fn bad_filters_and_unknown_workflows_get_clear_answers() {
    let r = start().await;
    let (cookie, field) = login_form(&r).await;
    let ok = post_login(&r, Some(&cookie), TOKEN, &field).await;
    let session = set_cookie(&ok, "pf_session")
        .expect("session")
        .split(';')
        .next()
        .expect("pair")
        .to_owned();
    let get = |path: String| {
        let (http, session) = (r.http.clone(), session.clone());
        async move {
            let page = http
                .get(path)
                .header("cookie", session)
                .send()
                .await
                .expect("get");
            (page.status().as_u16(), page.text().await.expect("body"))
        }
    };
    let (status, body) = get(format!("{}/ui/workflows?state=bogus", r.base)).await;
    assert_eq!(status, 400);
    assert!(
        body.contains("state: &quot;bogus&quot; is not a workflow state"),
        "{body}"
    );
    let (status, body) = get(format!("{}/ui/workflows?since=yesterday", r.base)).await;
    assert_eq!(status, 400);
    assert!(body.contains("since:"), "{body}");
    let (status, body) = get(format!("{}/ui/workflows?kind=%3Cscript%3E", r.base)).await;
    assert_eq!(status, 400);
    assert!(
        !body.contains("<script>"),
        "input is never echoed unescaped"
    );
    let (status, _) = get(format!("{}/ui/workflows?state=failed&since=2h", r.base)).await;
    assert_eq!(status, 200);
    let (status, body) = get(format!("{}/ui/workflows/prov-nothere", r.base)).await;
    assert_eq!(status, 404);
    assert!(body.contains("prov-nothere not found"), "{body}");
    let (status, _) = get(format!("{}/ui/workflows/{}", r.base, "x".repeat(300))).await;
    assert_eq!(status, 404);
    r.stop.cancel();
}
