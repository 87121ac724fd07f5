//! How an announce travels over MQTT.
//!
//! A device publishes its announce to `berth/announce/<vendor>/<serial>`
//! (QoS 1, not retained). The payload is either the CBOR announce map or
//! its JSON form (see `announce::to_json`, feature `std`); a JSON payload starts
//! with `{` (after optional whitespace), which no CBOR map does. A gateway
//! subscribes to `berth/announce/+/+` and refuses an announce whose vendor
//! and serial differ from the topic's.

use crate::announce::{check_serial, check_vendor, FieldError, MAX_SERIAL, MAX_VENDOR};

/// Topic prefix of announces.
pub const TOPIC_PREFIX: &str = "berth/announce/";
/// The subscription filter that receives every announce.
pub const TOPIC_FILTER: &str = "berth/announce/+/+";
/// Longest announce topic.
pub const MAX_TOPIC: usize = TOPIC_PREFIX.len() + MAX_VENDOR + 1 + MAX_SERIAL;

/// The topic a device with this vendor id and serial publishes to.
pub fn topic(vendor: &str, serial: &str) -> Result<heapless::String<MAX_TOPIC>, FieldError> {
    check_vendor(vendor)?;
    check_serial(serial)?;
    let mut t = heapless::String::new();
    // Cannot fail: both parts were checked against their bounds, which
    // MAX_TOPIC adds up.
    let _ = t.push_str(TOPIC_PREFIX);
    let _ = t.push_str(vendor);
    let _ = t.push_str("/");
    let _ = t.push_str(serial);
    Ok(t)
}

/// Splits an announce topic into vendor and serial, if it is one.
pub fn parse_topic(topic: &str) -> Option<(&str, &str)> {
    let rest = topic.strip_prefix(TOPIC_PREFIX)?;
    let (vendor, serial) = rest.split_once('/')?;
    check_vendor(vendor).ok()?;
    check_serial(serial).ok()?;
    Some((vendor, serial))
}

/// Whether an MQTT payload is the JSON form rather than CBOR.
pub fn is_json(payload: &[u8]) -> bool {
    payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{')
}

/// Decodes an MQTT announce payload of either form, and checks it against
/// the topic it came on.
#[cfg(feature = "std")]
pub fn decode_payload(
    topic: &str,
    payload: &[u8],
) -> Result<crate::announce::OwnedAnnounce, crate::announce::DecodeError> {
    use crate::announce::{Announce, DecodeError, OwnedAnnounce};
    let a = if is_json(payload) {
        crate::announce::from_json(payload)?
    } else {
        OwnedAnnounce::from(&Announce::decode(payload)?)
    };
    match parse_topic(topic) {
        Some((v, s)) if v == a.vendor && s == a.serial => Ok(a),
        _ => Err(DecodeError::TopicMismatch {
            topic: topic.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_round_trip_and_refusals() {
        let t = topic("acme", "SN:01").unwrap();
        assert_eq!(t.as_str(), "berth/announce/acme/SN:01");
        assert_eq!(parse_topic(&t), Some(("acme", "SN:01")));
        assert!(topic("acme", "a/b").is_err());
        assert!(topic("acme", "a+").is_err());
        assert!(topic("Acme", "a").is_err());
        assert_eq!(parse_topic("berth/announce/acme/a/b"), None);
        assert_eq!(parse_topic("other/acme/a"), None);
        let long_v = "v".repeat(MAX_VENDOR);
        let long_s = "s".repeat(MAX_SERIAL);
        assert_eq!(topic(&long_v, &long_s).unwrap().len(), MAX_TOPIC);
    }

    #[cfg(feature = "std")]
    #[test]
    fn payload_in_either_form_checked_against_topic() {
        use crate::announce::{to_json, AnnounceBuilder, DecodeError, OwnedAnnounce};
        let a = AnnounceBuilder::new("acme", "M", "SN-9", "1", "https://a.example", 4)
            .sign(&[9; 32])
            .unwrap();
        let mut cbor = [0u8; 512];
        let n = a.encode(&mut cbor).unwrap();
        let json = to_json(&a).unwrap();
        let t = topic("acme", "SN-9").unwrap();
        let want = OwnedAnnounce::from(&a);
        assert_eq!(decode_payload(&t, &cbor[..n]).unwrap(), want);
        assert_eq!(decode_payload(&t, json.as_bytes()).unwrap(), want);
        for wrong in ["berth/announce/acme/SN-8", "berth/announce/other/SN-9", "x"] {
            assert!(matches!(
                decode_payload(wrong, &cbor[..n]),
                Err(DecodeError::TopicMismatch { .. })
            ));
        }
        assert!(matches!(
            decode_payload(&t, b"{}"),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            decode_payload(&t, &[0xab]),
            Err(DecodeError::Cbor(_))
        ));
    }

    #[test]
    fn json_detection() {
        assert!(is_json(b"  {\"a\":1}"));
        assert!(!is_json(&[0xaa, 0x01]));
        assert!(!is_json(b""));
    }
}
