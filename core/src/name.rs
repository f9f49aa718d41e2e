//! Validated names. See the crate docs for why they exist.

use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest accepted [`Name`], in bytes.
pub const NAME_MAX_LEN: usize = 200;
/// Longest accepted tag or cache key segment, in bytes.
pub const KEY_SEGMENT_MAX_LEN: usize = 1024;

/// Why a name or key segment was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
#[non_exhaustive]
pub struct NameError {
    /// What kind of name it was meant to be (`"topic"`, `"queue"`, `"tag"`...).
    pub what: &'static str,
    /// The refused value (truncated to 64 bytes so a huge input does not flood logs).
    pub value: String,
    /// What rule it broke.
    pub reason: &'static str,
}

impl NameError {
    fn new(what: &'static str, value: &str, reason: &'static str) -> Self {
        let mut end = value.len().min(64);
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            what,
            value: value[..end].to_owned(),
            reason,
        }
    }
}

fn check(what: &'static str, value: &str, max: usize, extra: &[u8]) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::new(what, value, "must not be empty"));
    }
    if value.len() > max {
        return Err(NameError::new(what, value, "is too long"));
    }
    let ok = value.bytes().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') || extra.contains(&b)
    });
    if !ok {
        return Err(NameError::new(
            what,
            value,
            if extra.is_empty() {
                "may only hold ASCII letters, digits, '.', '_' and '-'"
            } else {
                "may only hold ASCII letters, digits, '.', '_', '-', ':' and '/'"
            },
        ));
    }
    Ok(())
}

/// Checks a tag or cache key: like a [`Name`] but `:` and `/` are allowed too, and up to
/// [`KEY_SEGMENT_MAX_LEN`] bytes. `what` names the thing in the error.
pub fn validate_key_segment(what: &'static str, value: &str) -> Result<(), NameError> {
    check(what, value, KEY_SEGMENT_MAX_LEN, b":/")
}

/// A name that is safe to use as a key segment, topic, SQL value or metric label:
/// `[A-Za-z0-9._-]`, 1 to [`NAME_MAX_LEN`] bytes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Name(String);

impl Name {
    /// Validates `value` as a name; `what` names the thing in the error (`"queue"`).
    pub fn parse(what: &'static str, value: impl Into<String>) -> Result<Self, NameError> {
        let value = value.into();
        check(what, &value, NAME_MAX_LEN, b"")?;
        Ok(Self(value))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Name::parse("name", s).map_err(serde::de::Error::custom)
    }
}

macro_rules! typed_name {
    ($(#[$doc:meta])* $ty:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $ty(Name);

        impl $ty {
            #[doc = concat!("Validates `value` as a ", $what, " name (`[A-Za-z0-9._-]`, 1-200 bytes).")]
            pub fn new(value: impl Into<String>) -> Result<Self, NameError> {
                Name::parse($what, value).map(Self)
            }

            /// The name as a string slice.
            pub fn as_str(&self) -> &str {
                self.0.as_str()
            }

            /// The underlying [`Name`].
            pub fn as_name(&self) -> &Name {
                &self.0
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(self.0.as_str(), f)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0.as_str())
            }
        }

        impl Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                self.0.as_str()
            }
        }

        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                self.0.as_str()
            }
        }

        impl Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                self.0.as_str()
            }
        }

        impl TryFrom<&str> for $ty {
            type Error = NameError;
            fn try_from(value: &str) -> Result<Self, NameError> {
                Self::new(value)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(value: String) -> Result<Self, NameError> {
                Self::new(value)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = NameError;
            fn from_str(value: &str) -> Result<Self, NameError> {
                Self::new(value)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

typed_name!(
    /// A bus topic (a Redis stream, a Kafka topic, an outbox routing value).
    Topic,
    "topic"
);
typed_name!(
    /// A consumer group: every group gets every event of a topic; members of one group split them.
    Group,
    "group"
);
typed_name!(
    /// A tenant id (CloudEvents extension `orgid`). Scopes job rows, cache keys and events.
    OrgId,
    "orgid"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_allowed_alphabet() {
        assert!(Topic::new("billing.invoices_v2-eu").is_ok());
        assert!(Topic::new("a".repeat(NAME_MAX_LEN)).is_ok());
    }

    #[test]
    fn refuses_separators_spaces_and_empties() {
        for bad in ["", "a:b", "a/b", "a b", "a\nb", "é", "a*", "{a}"] {
            let err = Topic::new(bad).unwrap_err();
            assert_eq!(err.what, "topic", "{bad:?}");
        }
        assert_eq!(
            Topic::new("a".repeat(NAME_MAX_LEN + 1)).unwrap_err().reason,
            "is too long"
        );
    }

    #[test]
    fn key_segments_allow_colon_and_slash_only() {
        assert!(validate_key_segment("tag", "invoice:42/lines").is_ok());
        assert!(validate_key_segment("tag", "invoice 42").is_err());
        assert!(validate_key_segment("tag", "").is_err());
    }

    #[test]
    fn deserialization_validates() {
        assert!(serde_json::from_str::<OrgId>("\"acme\"").is_ok());
        assert!(serde_json::from_str::<OrgId>("\"ac:me\"").is_err());
    }

    #[test]
    fn error_value_is_truncated_on_a_char_boundary() {
        let long = "é".repeat(100);
        let err = Topic::new(long).unwrap_err();
        assert!(err.value.len() <= 64);
    }
}
