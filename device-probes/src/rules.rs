//! Vendor rules: which devices Berth looks at and which vendor each belongs
//! to, read from a TOML file, plus the persistent ignore list.
//!
//! A rules file is a list of `[[rule]]` tables, each with exactly one
//! matcher (`usb`, `ble` or `mqtt`):
//!
//! ```toml
//! [[rule]]
//! vendor = "acme"
//! usb = { vid = 0x0403, pid = 0x6001, serial = "A10K" }
//! baud = 115200
//!
//! [[rule]]
//! vendor = "acme"
//! ble = { company_id = 0xFFFF }
//!
//! [[rule]]
//! action = "deny"
//! mqtt = { topic = "lab/#" }
//! ```
//!
//! Deny rules win over allow rules. When a file holds at least one allow
//! rule it narrows detection: only devices an allow rule matches are
//! reported. A serial port is opened only when an allow rule matches it
//! exactly (VID and PID, and serial/manufacturer when the rule names them).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::event::UsbIds;

/// Why a rules or ignore file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("bad rules file {path}, line {line}: {reason}")]
    Invalid {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("cannot read ignore list {path}: {source}")]
    IgnoreRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write ignore list {path}: {source}")]
    IgnoreWrite {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesConfig {
    #[serde(default)]
    rule: Vec<toml::Spanned<RuleConfig>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    vendor: Option<String>,
    action: Option<Action>,
    usb: Option<UsbMatchConfig>,
    ble: Option<BleMatchConfig>,
    mqtt: Option<MqttMatchConfig>,
    baud: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UsbMatchConfig {
    vid: u16,
    pid: u16,
    serial: Option<String>,
    manufacturer: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BleMatchConfig {
    company_id: Option<u16>,
    service_uuid: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MqttMatchConfig {
    topic: String,
}

/// What a rule does with the devices it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// What a rule matches on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matcher {
    Usb {
        vid: u16,
        pid: u16,
        serial: Option<String>,
        manufacturer: Option<String>,
    },
    Ble {
        company_id: Option<u16>,
        service_uuid: Option<String>,
    },
    Mqtt {
        topic: String,
    },
}

/// One validated rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub vendor: Option<String>,
    pub matcher: Matcher,
    pub baud: Option<u32>,
}

/// The outcome of matching a device against the rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// An allow rule matched; the device belongs to `vendor`.
    Allow { vendor: String, baud: Option<u32> },
    /// A deny rule matched.
    Deny,
    /// No rule matched.
    NoMatch,
}

/// A validated rule set. The empty set allows everything and opens no
/// serial port by itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<Rule>,
}

/// Baud rate used when a rule names none.
pub const DEFAULT_BAUD: u32 = 115_200;

impl Rules {
    /// Reads and validates a rules file.
    pub fn load(path: &Path) -> Result<Rules, RulesError> {
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.to_owned(),
            source,
        })?;
        Rules::parse(&text, path)
    }

    /// Validates rules text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Rules, RulesError> {
        let invalid = |offset: usize, reason: String| RulesError::Invalid {
            path: origin.to_owned(),
            line: line_of(text, offset),
            reason,
        };
        let config: RulesConfig = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start).unwrap_or(0);
            invalid(offset, e.message().trim().to_owned())
        })?;
        let mut rules = Vec::with_capacity(config.rule.len());
        for spanned in config.rule {
            let start = spanned.span().start;
            let rule = validate(spanned.into_inner()).map_err(|reason| invalid(start, reason))?;
            rules.push(rule);
        }
        Ok(Rules { rules })
    }

    /// The validated rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Whether these rules narrow detection to what an allow rule matches.
    pub fn narrows(&self) -> bool {
        self.rules.iter().any(|r| r.action == Action::Allow)
    }

    fn verdict(&self, matches: impl Fn(&Matcher) -> bool) -> Verdict {
        if self
            .rules
            .iter()
            .any(|r| r.action == Action::Deny && matches(&r.matcher))
        {
            return Verdict::Deny;
        }
        for r in &self.rules {
            if r.action == Action::Allow && matches(&r.matcher) {
                if let Some(vendor) = &r.vendor {
                    return Verdict::Allow {
                        vendor: vendor.clone(),
                        baud: r.baud,
                    };
                }
            }
        }
        Verdict::NoMatch
    }

    /// Matches a USB serial bridge. VID and PID must be equal; serial and
    /// manufacturer too when the rule names them.
    pub fn match_usb(&self, usb: &UsbIds) -> Verdict {
        self.verdict(|m| match m {
            Matcher::Usb {
                vid,
                pid,
                serial,
                manufacturer,
            } => {
                *vid == usb.vid
                    && *pid == usb.pid
                    && serial
                        .as_ref()
                        .is_none_or(|s| usb.serial.as_deref() == Some(s.as_str()))
                    && manufacturer
                        .as_ref()
                        .is_none_or(|s| usb.manufacturer.as_deref() == Some(s.as_str()))
            }
            _ => false,
        })
    }

    /// Matches a BLE advertisement by its company ids and service UUIDs.
    pub fn match_ble(&self, company_ids: &[u16], service_uuids: &[String]) -> Verdict {
        self.verdict(|m| match m {
            Matcher::Ble {
                company_id,
                service_uuid,
            } => {
                company_id.is_none_or(|c| company_ids.contains(&c))
                    && service_uuid.as_ref().is_none_or(|u| {
                        service_uuids
                            .iter()
                            .any(|have| have.eq_ignore_ascii_case(u))
                    })
            }
            _ => false,
        })
    }

    /// Matches an MQTT topic against the rules' topic filters.
    pub fn match_topic(&self, topic: &str) -> Verdict {
        self.verdict(|m| match m {
            Matcher::Mqtt { topic: filter } => topic_matches(filter, topic),
            _ => false,
        })
    }

    /// Applies the narrowing policy to a verdict: `Ok(vendor)` to keep the
    /// device (with the vendor a rule gave it, if any), `Err(reason)` to
    /// drop it.
    pub fn admit(&self, verdict: Verdict) -> Result<Option<String>, crate::event::DropReason> {
        match verdict {
            Verdict::Allow { vendor, .. } => Ok(Some(vendor)),
            Verdict::Deny => Err(crate::event::DropReason::Denied),
            Verdict::NoMatch if self.narrows() => Err(crate::event::DropReason::UnknownVendor),
            Verdict::NoMatch => Ok(None),
        }
    }
}

fn validate(c: RuleConfig) -> Result<Rule, String> {
    let action = c.action.unwrap_or(Action::Allow);
    let matchers =
        usize::from(c.usb.is_some()) + usize::from(c.ble.is_some()) + usize::from(c.mqtt.is_some());
    if matchers != 1 {
        return Err(format!(
            "a rule needs exactly one of usb, ble or mqtt, found {matchers}"
        ));
    }
    if action == Action::Allow {
        match &c.vendor {
            None => return Err("an allow rule needs a vendor".to_owned()),
            Some(v) if !valid_vendor(v) => {
                return Err(format!(
                    "vendor {v:?} must be 1 to 64 characters of a-z, 0-9, '.', '_' or '-'"
                ))
            }
            Some(_) => {}
        }
    }
    if c.baud == Some(0) {
        return Err("baud must be above 0".to_owned());
    }
    let matcher = if let Some(u) = c.usb {
        Matcher::Usb {
            vid: u.vid,
            pid: u.pid,
            serial: u.serial,
            manufacturer: u.manufacturer,
        }
    } else if let Some(b) = c.ble {
        if b.company_id.is_none() && b.service_uuid.is_none() {
            return Err("a ble matcher needs company_id or service_uuid".to_owned());
        }
        Matcher::Ble {
            company_id: b.company_id,
            service_uuid: b.service_uuid.map(|u| u.to_ascii_lowercase()),
        }
    } else if let Some(m) = c.mqtt {
        check_topic_filter(&m.topic)?;
        Matcher::Mqtt { topic: m.topic }
    } else {
        return Err("a rule needs a matcher".to_owned());
    };
    Ok(Rule {
        action,
        vendor: c.vendor,
        matcher,
        baud: c.baud,
    })
}

fn valid_vendor(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

fn check_topic_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("mqtt topic filter is empty".to_owned());
    }
    let levels: Vec<&str> = filter.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
            return Err(format!(
                "mqtt topic filter {filter:?}: '#' must be a whole last level"
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!(
                "mqtt topic filter {filter:?}: '+' must be a whole level"
            ));
        }
    }
    Ok(())
}

/// Whether `topic` matches the MQTT topic filter `filter` (`+` one level,
/// `#` the rest, MQTT 3.1.1 section 4.7).
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Device ids the technician chose to ignore, kept in a file, one id a
/// line. Saved atomically: temp file, fsync, rename, fsync of the
/// directory, so a power cut leaves either the old or the new list.
#[derive(Debug, Clone)]
pub struct IgnoreList {
    path: PathBuf,
    ids: BTreeSet<String>,
}

impl IgnoreList {
    /// Loads the list; a missing file is an empty list.
    pub fn load(path: &Path) -> Result<IgnoreList, RulesError> {
        let ids = match std::fs::read_to_string(path) {
            Ok(text) => text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(source) => {
                return Err(RulesError::IgnoreRead {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Ok(IgnoreList {
            path: path.to_owned(),
            ids,
        })
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.ids.iter().map(String::as_str)
    }

    /// Adds an id and saves; returns whether it was new.
    pub fn add(&mut self, id: &str) -> Result<bool, RulesError> {
        if id.contains('\n') {
            return Err(RulesError::IgnoreWrite {
                path: self.path.clone(),
                source: std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("device id {id:?} holds a newline"),
                ),
            });
        }
        let new = self.ids.insert(id.to_owned());
        if new {
            self.save()?;
        }
        Ok(new)
    }

    /// Removes an id and saves; returns whether it was there.
    pub fn remove(&mut self, id: &str) -> Result<bool, RulesError> {
        let had = self.ids.remove(id);
        if had {
            self.save()?;
        }
        Ok(had)
    }

    fn save(&self) -> Result<(), RulesError> {
        let err = |source| RulesError::IgnoreWrite {
            path: self.path.clone(),
            source,
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let file_name = self.path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = dir.join(format!(".{}.tmp.{}", file_name, std::process::id()));
        let mut body = String::new();
        for id in &self.ids {
            body.push_str(id);
            body.push('\n');
        }
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(body.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)?;
            std::fs::File::open(&dir)?.sync_all()
        };
        write().map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            err(e)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Rules, RulesError> {
        Rules::parse(text, Path::new("rules.toml"))
    }

    const GOOD: &str = r#"
[[rule]]
vendor = "acme"
usb = { vid = 0x0403, pid = 0x6001 }
baud = 9600

[[rule]]
action = "deny"
usb = { vid = 0x0403, pid = 0x6001, serial = "BAD1" }

[[rule]]
vendor = "blue"
ble = { company_id = 0x0059 }

[[rule]]
vendor = "tempco"
mqtt = { topic = "tempco/+/announce" }
"#;

    fn usb(vid: u16, pid: u16, serial: Option<&str>) -> UsbIds {
        UsbIds {
            vid,
            pid,
            serial: serial.map(str::to_owned),
            ..UsbIds::default()
        }
    }

    #[test]
    fn usb_rules_match_exactly_and_deny_wins() {
        let r = parse(GOOD).unwrap();
        assert!(r.narrows());
        assert_eq!(
            r.match_usb(&usb(0x0403, 0x6001, Some("A1"))),
            Verdict::Allow {
                vendor: "acme".into(),
                baud: Some(9600)
            }
        );
        assert_eq!(
            r.match_usb(&usb(0x0403, 0x6001, Some("BAD1"))),
            Verdict::Deny
        );
        assert_eq!(r.match_usb(&usb(0x0403, 0x6002, None)), Verdict::NoMatch);
        assert_eq!(
            r.admit(r.match_usb(&usb(0x0403, 0x6002, None))),
            Err(crate::event::DropReason::UnknownVendor)
        );
    }

    #[test]
    fn usb_rule_with_serial_needs_that_serial() {
        let r = parse("[[rule]]\nvendor = \"a\"\nusb = { vid = 1, pid = 2, serial = \"X\" }\n")
            .unwrap();
        assert_eq!(r.match_usb(&usb(1, 2, None)), Verdict::NoMatch);
        assert_eq!(r.match_usb(&usb(1, 2, Some("Y"))), Verdict::NoMatch);
        assert!(matches!(
            r.match_usb(&usb(1, 2, Some("X"))),
            Verdict::Allow { .. }
        ));
    }

    #[test]
    fn ble_and_mqtt_rules() {
        let r = parse(GOOD).unwrap();
        assert!(
            matches!(r.match_ble(&[0x0059], &[]), Verdict::Allow { vendor, .. } if vendor == "blue")
        );
        assert_eq!(r.match_ble(&[0x004c], &[]), Verdict::NoMatch);
        assert!(
            matches!(r.match_topic("tempco/x1/announce"), Verdict::Allow { vendor, .. } if vendor == "tempco")
        );
        assert_eq!(r.match_topic("tempco/x1/y/announce"), Verdict::NoMatch);
    }

    #[test]
    fn empty_rules_admit_everything_and_open_nothing() {
        let r = Rules::default();
        assert!(!r.narrows());
        assert_eq!(r.admit(r.match_topic("a/b")), Ok(None));
        assert_eq!(r.match_usb(&usb(1, 2, None)), Verdict::NoMatch);
    }

    #[test]
    fn topic_wildcards() {
        assert!(topic_matches("a/+/c", "a/b/c"));
        assert!(!topic_matches("a/+/c", "a/b/d"));
        assert!(topic_matches("a/#", "a/b/c/d"));
        assert!(topic_matches("a/#", "a"));
        assert!(topic_matches("#", "x/y"));
        assert!(!topic_matches("a/b", "a/b/c"));
        assert!(!topic_matches("a/b/c", "a/b"));
    }

    #[test]
    fn unknown_field_is_refused_with_line() {
        let text = "[[rule]]\nvendor = \"a\"\nusb = { vid = 1, pid = 2 }\ncolour = \"red\"\n";
        let e = parse(text).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, RulesError::Invalid { line: 4, .. }), "{msg}");
        assert!(msg.contains("colour"), "{msg}");
        assert!(msg.contains("rules.toml"), "{msg}");
    }

    #[test]
    fn semantic_errors_name_the_rule_line() {
        let text = "[[rule]]\nvendor = \"a\"\nusb = { vid = 1, pid = 2 }\n\n[[rule]]\nusb = { vid = 1, pid = 2 }\n";
        let e = parse(text).unwrap_err();
        assert!(
            matches!(&e, RulesError::Invalid { line: 5, reason, .. } if reason.contains("needs a vendor")),
            "{e}"
        );
        let e = parse("[[rule]]\nvendor = \"a\"\n").unwrap_err();
        assert!(e.to_string().contains("exactly one"), "{e}");
        let e = parse("[[rule]]\nvendor = \"a\"\nmqtt = { topic = \"a/#/b\" }\n").unwrap_err();
        assert!(e.to_string().contains("'#'"), "{e}");
        let e = parse("[[rule]]\nvendor = \"A B\"\nmqtt = { topic = \"a\" }\n").unwrap_err();
        assert!(e.to_string().contains("vendor"), "{e}");
        let e = parse("[[rule]]\nvendor = \"a\"\nusb = { vid = 70000, pid = 2 }\n").unwrap_err();
        assert!(matches!(e, RulesError::Invalid { line: 3, .. }), "{e}");
    }

    #[test]
    fn ignore_list_round_trips_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ignore");
        let mut l = IgnoreList::load(&path).unwrap();
        assert!(!l.contains("acme:1"));
        assert!(l.add("acme:1").unwrap());
        assert!(!l.add("acme:1").unwrap());
        l.add("serial:/dev/ttyUSB0").unwrap();
        let again = IgnoreList::load(&path).unwrap();
        assert!(again.contains("acme:1") && again.contains("serial:/dev/ttyUSB0"));
        assert!(l.remove("acme:1").unwrap());
        assert!(!IgnoreList::load(&path).unwrap().contains("acme:1"));
        // No temp files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(l.add("bad\nid").is_err());
    }
}
