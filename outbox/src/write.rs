//! Checks the write side runs before it touches the caller's transaction.

use windlass_core::Topic;
use windlass_eventbus::Event;

use crate::error::{Error, Result};

/// An event checked and encoded, ready to insert.
pub(crate) struct Prepared {
    pub(crate) id: uuid::Uuid,
    pub(crate) topic: Topic,
    pub(crate) org_id: Option<String>,
    pub(crate) partition_key: Option<String>,
    pub(crate) json: String,
}

/// Validates the topic and the size. No I/O: an error here leaves the transaction untouched.
pub(crate) fn prepare(topic: &str, event: &Event, max_event_size: usize) -> Result<Prepared> {
    let topic = Topic::new(topic)?;
    let json = event.to_json();
    if json.len() > max_event_size {
        return Err(Error::TooLarge {
            id: event.id().to_owned(),
            size: json.len(),
            limit: max_event_size,
        });
    }
    Ok(Prepared {
        id: uuid::Uuid::now_v7(),
        topic,
        org_id: event.org_id().map(|o| o.as_str().to_owned()),
        partition_key: event.ordering_key().map(str::to_owned),
        json,
    })
}
