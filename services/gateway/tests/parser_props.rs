//! Property tests of every parser at the HTTP edge: the Alertmanager payload, the Standard Webhooks
//! headers and signature, the provisioning request and the history query. Each is total (any input
//! gives a value or a field-level error, never a panic) and exact where the input is well formed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::Utc;
use proptest::prelude::*;
use proxflow_gateway::webhook::{Delivery, SignedHeaders, Verifier, WebhookKey, generate_secret};
use proxflow_gateway::{alertmanager, api, request};
use proxflow_platform::Profiles;
use serde_json::{Value, json};

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(
                prop_oneof![
                    Just("alerts".to_string()),
                    Just("labels".to_string()),
                    Just("name".to_string()),
                    Just("ip".to_string()),
                    Just("overrides".to_string()),
                    "[a-zA-Z]{1,10}"
                ],
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn alertmanager_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = alertmanager::parse(&bytes, "token:am", Utc::now());
    }

    #[test]
    fn alertmanager_json_of_any_shape_never_panics(mut value in any_json()) {
        if let Some(map) = value.as_object_mut() {
            map.insert("version".into(), json!("4"));
            map.insert("receiver".into(), json!("pf"));
        }
        let _ = alertmanager::parse(value.to_string().as_bytes(), "token:am", Utc::now());
    }

    #[test]
    fn well_formed_deliveries_give_one_alert_each(
        alerts in proptest::collection::vec(
            ("[A-Za-z]{1,12}", proptest::collection::btree_map("[a-z_]{1,8}", ".{0,30}", 0..6),
             "[0-9a-f]{16}"),
            1..20,
        )
    ) {
        let alerts: Vec<Value> = alerts
            .iter()
            .map(|(name, labels, fingerprint)| {
                let mut labels: serde_json::Map<String, Value> =
                    labels.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                labels.insert("alertname".into(), json!(name));
                json!({"status": "firing", "labels": labels, "annotations": {},
                       "startsAt": "2026-12-06T08:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
                       "fingerprint": fingerprint})
            })
            .collect();
        let n = alerts.len();
        let body = json!({"version": "4", "receiver": "pf", "status": "firing", "alerts": alerts});
        let parsed = alertmanager::parse(body.to_string().as_bytes(), "token:am", Utc::now()).unwrap();
        prop_assert_eq!(parsed.len(), n);
    }

    #[test]
    fn webhook_headers_of_any_text_never_panic(
        id in proptest::option::of(".{0,80}"),
        timestamp in proptest::option::of(".{0,24}"),
        signature in proptest::option::of(".{0,200}"),
        body in proptest::collection::vec(any::<u8>(), 0..128),
    ) {
        let secret = generate_secret();
        let verifier = Verifier::new(
            vec![WebhookKey::parse(&secret).unwrap()],
            std::time::Duration::from_secs(300),
            std::time::Duration::from_secs(900),
        );
        let delivery = || Delivery {
            id: id.as_deref(),
            timestamp: timestamp.as_deref(),
            signature: signature.as_deref(),
            body: &body,
        };
        let now = Utc::now().timestamp();
        let _ = verifier.check_headers(delivery(), now);
        prop_assert!(verifier.verify(delivery(), now).is_err() || signature.is_some());
    }

    #[test]
    fn a_signed_body_verifies_and_any_change_to_it_does_not(
        body in proptest::collection::vec(any::<u8>(), 1..256),
        flip in any::<prop::sample::Index>(),
    ) {
        let secret = generate_secret();
        let verifier = Verifier::new(
            vec![WebhookKey::parse(&secret).unwrap()],
            std::time::Duration::from_secs(300),
            std::time::Duration::from_secs(900),
        );
        let signed = SignedHeaders::new(&secret, &body).unwrap();
        let [(_, id), (_, timestamp), (_, signature)] = signed.pairs();
        let now = Utc::now().timestamp();
        let delivery = |body: &[u8]| {
            verifier.verify(
                Delivery {
                    id: Some(&id),
                    timestamp: Some(&timestamp),
                    signature: Some(&signature),
                    body,
                },
                now,
            )
        };
        prop_assert!(delivery(&body).is_ok());
        let mut changed = body.clone();
        let i = flip.index(changed.len());
        changed[i] ^= 0x01;
        prop_assert!(delivery(&changed).is_err());
    }

    #[test]
    fn provisioning_requests_of_any_shape_are_parsed_or_refused_by_field(value in any_json()) {
        let profiles = Profiles::default();
        if let Err(errors) = request::parse(value.to_string().as_bytes(), None, &profiles) {
            prop_assert!(!errors.is_empty());
        }
    }

    #[test]
    fn provisioning_request_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        key in proptest::option::of(".{0,200}"),
    ) {
        let _ = request::parse(&bytes, key.as_deref(), &Profiles::default());
    }

    #[test]
    fn history_queries_are_bounded_or_refused(
        since in proptest::option::of(prop_oneof![
            "[0-9]{1,20}(h|m|s|d|days|w|y|ms|ns)",
            ".{0,24}",
        ]),
        limit in proptest::option::of(any::<usize>()),
    ) {
        if let Ok((since, limit)) = api::history_window(since.as_deref(), limit) {
            prop_assert!(since <= std::time::Duration::from_secs(366 * 24 * 3600));
            prop_assert!((1..=10_000).contains(&limit));
        }
    }
}
