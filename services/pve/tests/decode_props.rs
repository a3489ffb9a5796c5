//! Property tests of the Proxmox answer decoder: whatever status and bytes come back, it returns a
//! value or a typed error, never panics; a 2xx JSON body is returned as is.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use proxflow_pve::client::decode_response;
use reqwest::{Method, StatusCode};

proptest! {
    #[test]
    fn any_answer_decodes_or_is_an_error(
        status in 100u16..600,
        reason in ".{0,40}",
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        let _ = decode_response(&Method::GET, "/nodes/pve1/qemu", status, &reason, &body);
    }

    #[test]
    fn error_bodies_of_any_shape_are_errors(
        status in 400u16..600,
        message in proptest::option::of(".{0,80}"),
        errors in proptest::collection::btree_map("[a-z]{1,8}", ".{0,20}", 0..4),
    ) {
        let body = serde_json::json!({"data": null, "message": message, "errors": errors});
        let status = StatusCode::from_u16(status).unwrap();
        let decoded = decode_response(
            &Method::POST, "/nodes/pve1/qemu", status, "failed", body.to_string().as_bytes(),
        );
        prop_assert!(decoded.is_err());
    }

    #[test]
    fn a_json_success_is_returned_as_is(n in any::<i64>(), s in ".{0,40}") {
        let body = serde_json::json!({"data": {"n": n, "s": s}});
        let decoded = decode_response(
            &Method::GET, "/version", StatusCode::OK, "OK", body.to_string().as_bytes(),
        )
        .unwrap();
        prop_assert_eq!(decoded, body);
    }
}
