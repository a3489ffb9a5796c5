//! Reading the newest events back (`bus::history::since`): the audit views and the console ask for
//! "the last N" of a subject that may hold thousands, interleaved with other subjects.

use chrono::Utc;
use proxflow_runtime::bus::history;
use proxflow_schemas::names::stream;
use proxflow_testkit::TestNats;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Item {
    n: u32,
}

async fn publish(js: &async_nats::jetstream::Context, subject: &str, n: u32) {
    js.publish(
        subject.to_owned(),
        serde_json::to_vec(&Item { n }).expect("encode").into(),
    )
    .await
    .expect("publish")
    .await
    .expect("stored");
}

#[tokio::test]
async fn the_newest_of_a_subject_come_back_oldest_first_whatever_else_the_stream_holds() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("history").await.expect("context");
    let js = &ctx.bus.js;
    for n in 0..300 {
        publish(js, "pf.evt.test.wanted", n).await;
        if n % 3 == 0 {
            publish(js, "pf.evt.test.other", 10_000 + n).await;
        }
    }
    let last: Vec<Item> = history::since(
        js,
        stream::EVT,
        "pf.evt.test.wanted",
        Utc::now() - chrono::Duration::hours(1),
        10,
    )
    .await
    .expect("history");
    let ns: Vec<u32> = last.iter().map(|i| i.n).collect();
    assert_eq!(ns, (290..300).collect::<Vec<_>>());

    // More asked than there are: all of them, and only of that subject.
    let all: Vec<Item> = history::since(
        js,
        stream::EVT,
        "pf.evt.test.other",
        Utc::now() - chrono::Duration::hours(1),
        1_000,
    )
    .await
    .expect("history");
    assert_eq!(all.len(), 100);
    assert!(all.iter().all(|i| i.n >= 10_000));

    // A wildcard subject reads both, newest last.
    let mixed: Vec<Item> = history::since(
        js,
        stream::EVT,
        "pf.evt.test.*",
        Utc::now() - chrono::Duration::hours(1),
        3,
    )
    .await
    .expect("history");
    assert_eq!(
        mixed.iter().map(|i| i.n).collect::<Vec<_>>(),
        vec![10_297, 298, 299]
    );
}

#[tokio::test]
async fn nothing_older_than_since_is_returned_even_when_fewer_than_the_limit_are_newer() {
    let nats = TestNats::start().expect("nats-server");
    let ctx = nats.context("history-since").await.expect("context");
    let js = &ctx.bus.js;
    for n in 0..50 {
        publish(js, "pf.evt.test.wanted", n).await;
    }
    // Just after the newest stored one, by the server's own clock.
    let newest = js
        .get_stream(stream::EVT)
        .await
        .expect("stream")
        .get_last_raw_message_by_subject("pf.evt.test.wanted")
        .await
        .expect("newest");
    let cut = chrono::DateTime::from_timestamp_nanos(
        i64::try_from(newest.time.unix_timestamp_nanos()).expect("time") + 1,
    );
    for n in 50..55 {
        publish(js, "pf.evt.test.wanted", n).await;
    }
    let newer: Vec<Item> = history::since(js, stream::EVT, "pf.evt.test.wanted", cut, 20)
        .await
        .expect("history");
    assert_eq!(
        newer.iter().map(|i| i.n).collect::<Vec<_>>(),
        (50..55).collect::<Vec<_>>()
    );
    let fresh = TestNats::start().expect("nats-server");
    let empty = fresh.context("history-empty").await.expect("context");
    let nothing: Vec<Item> =
        history::since(&empty.bus.js, stream::EVT, "pf.evt.test.wanted", cut, 20)
            .await
            .expect("history of an empty stream");
    assert!(nothing.is_empty());
    let none: Vec<Item> = history::since(js, stream::EVT, "pf.evt.test.missing", cut, 20)
        .await
        .expect("history of a subject nobody published on");
    assert!(none.is_empty());
}
