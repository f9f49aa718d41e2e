//! The Redis keys of a topic. Every key one command or script touches shares a hash slot
//! (Redis Cluster hash tags), and the partitions of a topic spread over slots:
//!
//! | key | type | slot tag |
//! |---|---|---|
//! | `{prefix}:{topic:p}` | stream: partition `p` | `topic:p` |
//! | `{prefix}:{topic:p}:dlq` | stream: dead letters of partition `p` | `topic:p` |
//! | `{prefix}:{topic:p}:lease:{group}` | hash: `owner`, `epoch`, `until` of `p` in `group` | `topic:p` |
//! | `{prefix}:{topic}:meta` | hash: `partitions` | `topic` |
//! | `{prefix}:{topic}:groups` | set: the topic's consumer groups | `topic` |
//! | `{prefix}:{topic}:g:{group}:members` | sorted set: live members, by expiry | `topic` |
//! | `{prefix}:{topic}:g:{group}:control` | stream: membership nudges | `topic` |
//!
//! Topic and group names are validated names (`[A-Za-z0-9._-]`) and the prefix may not hold
//! braces, so no key can hold a second hash tag or collide with another topic's.

/// The keys of one bus (one prefix).
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    pub(crate) fn stream(&self, topic: &str, partition: u32) -> String {
        format!("{}:{{{topic}:{partition}}}", self.prefix)
    }

    pub(crate) fn dlq(&self, topic: &str, partition: u32) -> String {
        format!("{}:{{{topic}:{partition}}}:dlq", self.prefix)
    }

    pub(crate) fn lease(&self, topic: &str, partition: u32, group: &str) -> String {
        format!("{}:{{{topic}:{partition}}}:lease:{group}", self.prefix)
    }

    pub(crate) fn meta(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:meta", self.prefix)
    }

    pub(crate) fn groups(&self, topic: &str) -> String {
        format!("{}:{{{topic}}}:groups", self.prefix)
    }

    pub(crate) fn members(&self, topic: &str, group: &str) -> String {
        format!("{}:{{{topic}}}:g:{group}:members", self.prefix)
    }

    pub(crate) fn control(&self, topic: &str, group: &str) -> String {
        format!("{}:{{{topic}}}:g:{group}:control", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot_tag(key: &str) -> String {
        let open = key.find('{').unwrap();
        let close = open + key[open..].find('}').unwrap();
        key[open + 1..close].to_owned()
    }

    #[test]
    fn the_keys_a_script_touches_share_a_hash_tag() {
        let k = Keys::new("windlass");
        let tag = slot_tag(&k.stream("orders", 3));
        assert_eq!(tag, "orders:3");
        assert_eq!(slot_tag(&k.dlq("orders", 3)), tag);
        assert_eq!(slot_tag(&k.lease("orders", 3, "ledger")), tag);
        assert_ne!(slot_tag(&k.stream("orders", 4)), tag);
        let topic = slot_tag(&k.meta("orders"));
        assert_eq!(topic, "orders");
        assert_eq!(slot_tag(&k.members("orders", "ledger")), topic);
        assert_eq!(slot_tag(&k.control("orders", "ledger")), topic);
        assert_eq!(slot_tag(&k.groups("orders")), topic);
        assert_eq!(k.stream("orders", 3), "windlass:{orders:3}");
    }
}
