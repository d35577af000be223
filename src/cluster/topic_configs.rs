//! The topic configs this broker knows (the ones DescribeConfigs reports), the
//! values each accepts, and how a change turns a topic's overrides into new
//! ones. Pure and deterministic: the admin request path checks a change with
//! it before proposing, and the controller applies it the same way on every
//! replica.

use std::collections::BTreeMap;

use super::{compaction, retention};
use crate::config::BrokerConfig;
use crate::raft::command::{ConfigChange, ConfigOp};

/// The values one config accepts.
enum Kind {
    /// A comma-separated list, each element one of these (Kafka's LIST type:
    /// the only kind APPEND and SUBTRACT apply to).
    List(&'static [&'static str]),
    /// Exactly one of these.
    OneOf(&'static [&'static str]),
    /// A 32-bit integer (Kafka's INT) of at least this value.
    Int { min: i32 },
    /// A 64-bit integer (Kafka's LONG) of at least this value.
    Long { min: i64 },
    /// A number from 0 to 1 (Kafka's DOUBLE, in that range).
    Ratio,
}

/// `(name, kind)` of every known topic config, sorted by name.
const KNOWN: &[(&str, Kind)] = &[
    ("cleanup.policy", Kind::List(&["compact", "delete"])),
    (
        "compression.type",
        Kind::OneOf(&["producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"]),
    ),
    (compaction::DELETE_RETENTION_MS, Kind::Long { min: 0 }),
    (compaction::MAX_COMPACTION_LAG_MS, Kind::Long { min: 1 }),
    ("max.message.bytes", Kind::Int { min: 0 }),
    ("message.timestamp.type", Kind::OneOf(&["CreateTime", "LogAppendTime"])),
    (compaction::MIN_CLEANABLE_DIRTY_RATIO, Kind::Ratio),
    (compaction::MIN_COMPACTION_LAG_MS, Kind::Long { min: 0 }),
    ("min.insync.replicas", Kind::Int { min: 1 }),
    (retention::RETENTION_BYTES, Kind::Long { min: -1 }),
    (retention::RETENTION_MS, Kind::Long { min: -1 }),
    (retention::SEGMENT_BYTES, Kind::Int { min: 14 }),
    (retention::SEGMENT_MS, Kind::Long { min: 1 }),
];

fn kind_of(name: &str) -> Option<&'static Kind> {
    KNOWN.iter().find(|(known, _)| *known == name).map(|(_, kind)| kind)
}

/// The default of every known config: the broker's settings they default to
/// as in Kafka (`message_max_bytes`, the `log_*` retention keys), and
/// Kafka's own for compaction.
pub fn defaults(cfg: &BrokerConfig) -> Vec<(&'static str, String)> {
    let mut retained = retention::topic_defaults(cfg);
    retained.extend(compaction::topic_defaults());
    KNOWN
        .iter()
        .map(|(name, _)| {
            let value = match *name {
                "cleanup.policy" => "delete".to_string(),
                "compression.type" => "producer".to_string(),
                "max.message.bytes" => cfg.message_max_bytes.to_string(),
                "message.timestamp.type" => "CreateTime".to_string(),
                other => retained
                    .iter()
                    .find(|(retention_name, _)| *retention_name == other)
                    .map_or_else(|| "1".to_string(), |(_, value)| value.clone()),
            };
            (*name, value)
        })
        .collect()
}

/// Checks the configs of a new topic: every name known, every value valid.
pub fn validate_new(configs: &BTreeMap<String, String>) -> Result<(), String> {
    configs.iter().try_for_each(|(name, value)| validate(name, value))
}

/// Whether a `cleanup.policy` value makes a topic compacted.
pub fn is_compacted(policy: &str) -> bool {
    elements(policy).contains(&"compact")
}

/// Whether clients may change `name` (AlterConfigs, IncrementalAlterConfigs).
pub fn is_alterable(name: &str) -> bool {
    kind_of(name).is_some()
}

/// The elements of a list value, as Kafka's parser reads it (trimmed, empty value = no elements).
fn elements(value: &str) -> Vec<&str> {
    value.split(',').map(str::trim).filter(|e| !e.is_empty()).collect()
}

/// Checks `value` for the known config `name`.
fn validate(name: &str, value: &str) -> Result<(), String> {
    let kind = kind_of(name).ok_or_else(|| format!("unknown topic config {name}"))?;
    let valid = match kind {
        Kind::List(allowed) => {
            let parts = elements(value);
            !parts.is_empty() && parts.iter().all(|part| allowed.contains(part))
        }
        Kind::OneOf(allowed) => allowed.contains(&value),
        Kind::Int { min } => value.parse::<i32>().is_ok_and(|n| n >= *min),
        Kind::Long { min } => value.parse::<i64>().is_ok_and(|n| n >= *min),
        Kind::Ratio => value.parse::<f64>().is_ok_and(|n| (0.0..=1.0).contains(&n)),
    };
    if valid {
        return Ok(());
    }
    let expected = match kind {
        Kind::List(allowed) => format!("a non-empty list of {}", allowed.join(", ")),
        Kind::OneOf(allowed) => format!("one of {}", allowed.join(", ")),
        Kind::Int { min } => format!("an integer of at least {min}"),
        Kind::Long { min } => format!("an integer of at least {min}"),
        Kind::Ratio => "a number from 0 to 1".to_string(),
    };
    Err(format!("invalid value {value:?} for {name}: expected {expected}"))
}

/// The overrides a topic has after `changes`. `current` are its overrides now;
/// `replace` starts from none (AlterConfigs), otherwise from `current`
/// (IncrementalAlterConfigs). APPEND and SUBTRACT start from the override or,
/// without one, the default, as Kafka does.
///
/// Overrides of configs this broker does not know (which CreateTopics
/// accepted before it checked configs) may be deleted, and AlterConfigs may
/// carry them over unchanged, which is what clients do when they resend a
/// topic's overrides to keep them; any other change to them is refused.
pub fn apply_changes(
    current: &BTreeMap<String, String>,
    replace: bool,
    changes: &[ConfigChange],
) -> Result<BTreeMap<String, String>, String> {
    let mut seen = std::collections::BTreeSet::new();
    if let Some(twice) = changes.iter().find(|change| !seen.insert(change.name.as_str())) {
        return Err(format!("{} is changed more than once", twice.name));
    }
    let mut next = if replace { BTreeMap::new() } else { current.clone() };
    for ConfigChange { name, op } in changes {
        let known = kind_of(name);
        let unknown = || Err(format!("unknown topic config {name}"));
        let value = match op {
            ConfigOp::Delete => {
                if known.is_none() && !current.contains_key(name) {
                    return unknown();
                }
                next.remove(name);
                continue;
            }
            ConfigOp::Set(value) if known.is_none() => {
                if !(replace && current.get(name) == Some(value)) {
                    return unknown();
                }
                next.insert(name.clone(), value.clone());
                continue;
            }
            ConfigOp::Set(value) => value.clone(),
            ConfigOp::Append(value) | ConfigOp::Subtract(value) => {
                match known {
                    None => return unknown(),
                    Some(Kind::List(_)) => {}
                    Some(_) => {
                        return Err(format!(
                            "{name} is not a list: it cannot be appended to or subtracted from"
                        ))
                    }
                }
                let base = next.get(name).cloned().unwrap_or_else(|| default_of(name));
                let mut parts: Vec<String> = elements(&base).into_iter().map(str::to_string).collect();
                for element in elements(value) {
                    if matches!(op, ConfigOp::Append(_)) {
                        if !parts.iter().any(|part| part == element) {
                            parts.push(element.to_string());
                        }
                    } else {
                        parts.retain(|part| part != element);
                    }
                }
                parts.join(",")
            }
        };
        validate(name, &value)?;
        next.insert(name.clone(), value);
    }
    Ok(next)
}

/// The default of a list config (the only configs APPEND and SUBTRACT reach);
/// list defaults do not depend on the broker's settings.
fn default_of(name: &str) -> String {
    match name {
        "cleanup.policy" => "delete".to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(name: &str, op: ConfigOp) -> ConfigChange {
        ConfigChange { name: name.into(), op }
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn incremental_changes_keep_other_overrides() {
        let current = map(&[("compression.type", "gzip"), ("min.insync.replicas", "2")]);
        let next = apply_changes(
            &current,
            false,
            &[
                change("compression.type", ConfigOp::Set("zstd".into())),
                change("min.insync.replicas", ConfigOp::Delete),
                change("cleanup.policy", ConfigOp::Append("compact".into())),
            ],
        )
        .unwrap();
        assert_eq!(
            next,
            map(&[("cleanup.policy", "delete,compact"), ("compression.type", "zstd")])
        );
        let next = apply_changes(
            &next,
            false,
            &[change("cleanup.policy", ConfigOp::Subtract("delete".into()))],
        );
        assert_eq!(next.unwrap()["cleanup.policy"], "compact");
    }

    #[test]
    fn replace_drops_overrides_not_resent_and_carries_unknown_ones_over_unchanged() {
        let current = map(&[("compression.type", "gzip"), ("flush.messages", "60000")]);
        let next = apply_changes(
            &current,
            true,
            &[
                change("max.message.bytes", ConfigOp::Set("1000".into())),
                change("flush.messages", ConfigOp::Set("60000".into())),
            ],
        );
        assert_eq!(
            next.unwrap(),
            map(&[("max.message.bytes", "1000"), ("flush.messages", "60000")])
        );
        let changed = apply_changes(&current, true, &[change("flush.messages", ConfigOp::Set("1".into()))]);
        assert!(changed.unwrap_err().contains("unknown topic config"));
        let deleted = apply_changes(&current, false, &[change("flush.messages", ConfigOp::Delete)]);
        assert_eq!(deleted.unwrap(), map(&[("compression.type", "gzip")]));
    }

    #[test]
    fn refuses_unknown_names_bad_values_and_misused_operations() {
        let none = BTreeMap::new();
        let refused = [
            vec![change("dummy.doesntexist", ConfigOp::Set("1".into()))],
            vec![change("dummy.doesntexist", ConfigOp::Delete)],
            vec![change("compression.type", ConfigOp::Set("brotli".into()))],
            vec![change("cleanup.policy", ConfigOp::Set("compact,forever".into()))],
            vec![change("cleanup.policy", ConfigOp::Subtract("delete".into()))],
            vec![change("max.message.bytes", ConfigOp::Set("-1".into()))],
            vec![change("max.message.bytes", ConfigOp::Set("3000000000".into()))],
            vec![change("min.insync.replicas", ConfigOp::Set("0".into()))],
            vec![change("min.cleanable.dirty.ratio", ConfigOp::Set("1.5".into()))],
            vec![change("delete.retention.ms", ConfigOp::Set("-1".into()))],
            vec![change("message.timestamp.type", ConfigOp::Append("CreateTime".into()))],
            vec![
                change("compression.type", ConfigOp::Set("gzip".into())),
                change("compression.type", ConfigOp::Delete),
            ],
        ];
        for changes in refused {
            assert!(apply_changes(&none, false, &changes).is_err(), "{changes:?}");
        }
    }

    #[test]
    fn every_default_is_valid() {
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/single-node.toml");
        let cfg = BrokerConfig::load(&shipped).unwrap();
        for (name, value) in defaults(&cfg) {
            assert_eq!(validate(name, &value), Ok(()), "{name}");
            assert!(is_alterable(name));
        }
    }
}
