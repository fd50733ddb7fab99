//! The trigger-type contract: what a flow's `"trigger": {"type": ...}` names. The core's own
//! is [`Webhook`](super::Webhook); an integration adds its own (Halo's `halo.incidents`)
//! through `Integration::trigger_types`, exactly as an embedder's integration would.

use serde_json::{Map, Value};

use super::TriggerQuery;
use crate::template::OutputSpec;

/// What a trigger type is: its name, what it is for, the outputs templates reach as
/// `trigger.<name>` and the outputs flood control correlates on when a flow does not say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TriggerDescription {
    /// The name flows use in `"trigger": {"type": ...}`, e.g. `webhook`.
    pub type_name: &'static str,
    /// One sentence for editors and listings.
    pub summary: &'static str,
    pub outputs: Vec<OutputSpec>,
    /// Flood control's `correlate_on` when the flow leaves it out (each a trigger output).
    pub default_correlate_on: Vec<&'static str>,
}

/// One event of an accepted request, for a trigger type to turn into outputs.
#[derive(Debug)]
pub struct TriggerEvent<'a> {
    /// The id of the HTTP request that delivered the event.
    pub request_id: &'a str,
    /// When the request arrived, RFC 3339 UTC.
    pub received_at: &'a str,
    pub query: &'a TriggerQuery,
    /// The event: the body, or one element of a batch (a JSON array).
    pub event: Map<String, Value>,
}

/// A kind of trigger. The server authenticates the request, splits its body into events and
/// stores them; the type decides what each event means.
pub trait TriggerType: Send + Sync + 'static {
    fn describe(&self) -> TriggerDescription;

    /// The sender's id for this delivery, when it has one: a second request with the same id
    /// (a retry, a manual re-send) starts no second run. `None` (the default) turns
    /// de-duplication off for the event.
    fn delivery_id(&self, _event: &Map<String, Value>) -> Option<String> {
        None
    }

    /// The trigger outputs of one event: an object with every output the description names.
    fn outputs(&self, event: TriggerEvent<'_>) -> Value;
}
