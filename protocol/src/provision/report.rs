//! The report: what a gateway tells the vendor (`POST /v1/reports`) after
//! it built the jail, delivered the apps, ran the checks, or rolled back.

use std::format;
use std::string::String;
use std::vec::Vec;

use minicbor::{Decode, Encode};

use super::{
    check_count, check_len, check_name, check_plan_id, check_text, invalid, CborMessage, Invalid,
    FORMAT,
};
use crate::announce;

/// Largest encoded report, in bytes.
pub const MAX_REPORT: usize = 96 * 1024;
/// Most check results in one report.
pub const MAX_CHECK_RESULTS: usize = 64;
/// Longest output kept per check, in bytes; gateways truncate to it.
pub const MAX_CHECK_OUTPUT: usize = 1024;
/// Longest error text, in bytes.
pub const MAX_ERROR: usize = 4096;
/// Longest jail address text (an IPv6 address with prefix fits).
pub const MAX_ADDRESS: usize = 64;

/// `POST /v1/reports` body.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Report {
    /// Always [`FORMAT`].
    #[n(0)]
    pub format: u32,
    /// The plan and version this report is about.
    #[n(1)]
    pub plan_id: String,
    #[n(2)]
    pub version: u64,
    /// The reporting gateway's id (as in the request).
    #[n(3)]
    pub gateway_id: String,
    /// The device's serial, as in the plan.
    #[n(4)]
    pub serial: String,
    /// The jail's name on the gateway.
    #[n(5)]
    pub jail: String,
    /// The jail's address on the gateway's bridge, e.g. `10.77.0.5/24`; absent
    /// when the jail has no network or was not built.
    #[n(6)]
    pub address: Option<String>,
    #[n(7)]
    pub state: JailState,
    #[n(8)]
    pub checks: Vec<CheckResult>,
    /// What went wrong, when `state` is `Failed` or `RolledBack`.
    #[n(9)]
    pub error: Option<String>,
}

/// Where the plan stands on the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(index_only)]
pub enum JailState {
    /// Waiting for a technician's approval.
    #[n(0)]
    Pending,
    /// The jail exists; apps not delivered yet.
    #[n(1)]
    Built,
    /// Apps delivered and started; checks running.
    #[n(2)]
    Delivered,
    /// Every check passed: the plan is in force.
    #[n(3)]
    Running,
    /// The plan could not be applied; nothing was left behind.
    #[n(4)]
    Failed,
    /// The plan failed and the gateway went back to the previous version.
    #[n(5)]
    RolledBack,
    /// A technician refused the plan.
    #[n(6)]
    Refused,
}

/// The outcome of one of the plan's checks.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct CheckResult {
    /// The app the check belongs to.
    #[n(0)]
    pub app: String,
    /// Its position in the app's `checks`.
    #[n(1)]
    pub index: u32,
    #[n(2)]
    pub passed: bool,
    /// What the check saw (command output, HTTP status, error), truncated to
    /// [`MAX_CHECK_OUTPUT`] bytes.
    #[n(3)]
    pub output: String,
    /// How long it took, in milliseconds.
    #[n(4)]
    pub elapsed_ms: u32,
}

/// Truncates `s` to at most `max` bytes on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl CborMessage for Report {
    const WHAT: &'static str = "report";
    const MAX: usize = MAX_REPORT;

    fn format(&self) -> u32 {
        self.format
    }

    fn validate(&self) -> Result<(), Invalid> {
        if self.format != FORMAT {
            return Err(invalid(
                "format",
                format!("is {}, must be {FORMAT}", self.format),
            ));
        }
        check_plan_id("plan_id", &self.plan_id)?;
        if self.version == 0 {
            return Err(invalid("version", "must be at least 1"));
        }
        check_plan_id("gateway_id", &self.gateway_id)?;
        announce::check_serial(&self.serial).map_err(|e| super::from_field("serial", e))?;
        check_name("jail", &self.jail)?;
        if let Some(a) = &self.address {
            check_len("address", a, MAX_ADDRESS)?;
            let ip = a.split_once('/').map_or(a.as_str(), |(ip, _)| ip);
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid("address", format!("`{a}` is not an IP address")));
            }
            if let Some((_, len)) = a.split_once('/') {
                let max = if ip.contains(':') { 128 } else { 32 };
                if len.parse::<u8>().map_or(true, |l| l > max) {
                    return Err(invalid("address", format!("`{a}` has a bad prefix length")));
                }
            }
        }
        check_count("checks", &self.checks, MAX_CHECK_RESULTS)?;
        for (i, c) in self.checks.iter().enumerate() {
            check_name(&format!("checks[{i}].app"), &c.app)?;
            check_text(&format!("checks[{i}].output"), &c.output, MAX_CHECK_OUTPUT)?;
        }
        if let Some(e) = &self.error {
            check_text("error", e, MAX_ERROR)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::prelude::rust_2021::*;
    use std::vec;

    use super::*;
    use crate::provision::MessageError;

    fn sample() -> Report {
        Report {
            format: FORMAT,
            plan_id: "p-3f9a".into(),
            version: 4,
            gateway_id: "gw-17".into(),
            serial: "SN-1".into(),
            jail: "acme".into(),
            address: Some("10.77.0.5/24".into()),
            state: JailState::RolledBack,
            checks: vec![CheckResult {
                app: "collector".into(),
                index: 2,
                passed: false,
                output: "GET /health: 503".into(),
                elapsed_ms: 5000,
            }],
            error: Some("check apps[0].checks[2] failed".into()),
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let b = r.to_cbor().unwrap();
        assert_eq!(Report::from_cbor(&b).unwrap(), r);
        let mut r = sample();
        r.address = None;
        r.error = None;
        r.state = JailState::Running;
        let b = r.to_cbor().unwrap();
        assert_eq!(Report::from_cbor(&b).unwrap(), r);
    }

    #[test]
    fn refuses_bad_fields() {
        let mut r = sample();
        r.address = Some("10.77.0.500".into());
        assert_eq!(r.validate().unwrap_err().field, "address");
        r.address = Some("10.77.0.5/33".into());
        assert_eq!(r.validate().unwrap_err().field, "address");
        r.address = Some("fd00::5/64".into());
        r.validate().unwrap();
        let mut r = sample();
        r.checks[0].output = "x".repeat(MAX_CHECK_OUTPUT + 1);
        assert_eq!(r.validate().unwrap_err().field, "checks[0].output");
        let mut r = sample();
        r.version = 0;
        assert!(matches!(r.to_cbor(), Err(MessageError::Invalid { .. })));
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abc", 2), "ab");
        assert_eq!(truncate("aé", 2), "a");
    }
}
