//! Topic and consumer group names.
//!
//! Invariant: a valid name is 1 to 249 bytes of `[A-Za-z0-9._-]` and is neither
//! `.` nor `..` (Kafka's rule), so a name used as a directory can never reach
//! outside the data directory or hide as a path trick.

use crate::error::{Error, Result};
use crate::limits::{GROUP_NAME_BYTES_MAX, PRODUCER_NAME_BYTES_MAX, TOPIC_NAME_BYTES_MAX};

/// Checks a topic name.
pub fn validate_topic(name: &str) -> Result<()> {
    validate("topic", name, TOPIC_NAME_BYTES_MAX)
}

/// Checks a fenced producer's name.
pub fn validate_producer(name: &str) -> Result<()> {
    validate("producer", name, PRODUCER_NAME_BYTES_MAX)
}

/// Checks a consumer group name.
pub fn validate_group(name: &str) -> Result<()> {
    validate("group", name, GROUP_NAME_BYTES_MAX)
}

fn validate(kind: &'static str, name: &str, max_bytes: usize) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty".to_string())
    } else if name.len() > max_bytes {
        Some(format!(
            "it is {} bytes, over the limit of {max_bytes}",
            name.len()
        ))
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not names".to_string())
    } else {
        name.chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
            .map(|c| format!("character {c:?} is not allowed; use A-Z, a-z, 0-9, '.', '_', '-'"))
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidName {
            kind,
            name: name.chars().take(300).collect(),
            reason,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in [
            "orders",
            "orders.created",
            "billing_v2",
            "a-b",
            ".hidden",
            "x",
        ] {
            assert!(validate_topic(name).is_ok(), "{name}");
        }
        assert!(validate_topic(&"a".repeat(TOPIC_NAME_BYTES_MAX)).is_ok());
    }

    #[test]
    fn rejects_names_that_could_escape_or_confuse() {
        let too_long = "a".repeat(TOPIC_NAME_BYTES_MAX + 1);
        for name in [
            "", ".", "..", "a/b", "../x", "a\\b", "a b", "é", "a\0b", &too_long,
        ] {
            let err = validate_topic(name).expect_err(name);
            assert!(matches!(err, Error::InvalidName { .. }), "{name}: {err}");
        }
        let msg = validate_topic(&too_long).expect_err("too long").to_string();
        assert!(msg.contains("250 bytes") && msg.contains("249"), "{msg}");
    }
}
