//! Property tests of the UPID parser: total over any input, and exact on what Proxmox writes.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use proxflow_schemas::pve::Upid;

proptest! {
    #[test]
    fn any_text_is_parsed_or_refused_never_a_panic(text in ".{0,300}") {
        let _ = text.parse::<Upid>();
    }

    #[test]
    fn text_shaped_like_a_upid_is_parsed_or_refused(
        parts in proptest::collection::vec("[A-Za-z0-9@!:/ -]{0,12}", 0..10)
    ) {
        let _ = format!("UPID:{}:", parts.join(":")).parse::<Upid>();
    }

    #[test]
    fn what_proxmox_writes_round_trips(
        node in "[a-z][a-z0-9-]{0,14}[a-z0-9]",
        pid in 0u32..=u32::MAX,
        pstart in 0u64..0xF_FFFF_FFFF,
        starttime in 0u32..=u32::MAX,
        kind in "[a-z]{3,12}",
        id in "[0-9]{0,6}",
        user in "[a-z]{1,8}@(pam|pve)(![a-z]{1,8})?",
    ) {
        let raw = format!(
            "UPID:{node}:{pid:08X}:{pstart:08X}:{starttime:08X}:{kind}:{id}:{user}:"
        );
        let upid: Upid = raw.parse().unwrap();
        prop_assert_eq!(upid.as_str(), raw.as_str());
        prop_assert_eq!(upid.to_string(), raw);
    }
}
