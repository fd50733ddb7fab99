//! Reading a record's work notes and comments (`../shared/reference/servicenow-api.md` §4.2)
//! by the path the integration user's roles allow: the display values of `work_notes` and
//! `comments` (Option B, needs only read access to the record: the default), or
//! `sys_journal_field` rows (Option A, needs `audit_viewer`). A note can also arrive whole in a
//! webhook body, as a `sys_journal_field` row. Each becomes one [`JournalEntry`], whose key is
//! the same whichever path found it, so webhooks and scans sync a note once.

use serde_json::Value;

use super::config::JournalSource;
use super::{ServiceNowConnection, digest};
use crate::outbound::Outbound;
use crate::step::StepError;

/// The journal fields synced, with the label their entries carry in display values.
const ELEMENTS: &[(&str, &str)] = &[
    ("work_notes", "Work notes"),
    ("comments", "Additional comments"),
];

/// ServiceNow's raw and default display date-time format (§2.7).
const TIME_FORMAT: &str = "%Y-%m-%d %H:%M:%S";

/// One work note or comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalEntry {
    /// `work_notes` or `comments`.
    pub element: String,
    /// When it was written, raw (`YYYY-MM-DD HH:MM:SS`, UTC).
    pub created_on: String,
    /// The writer: a user name (journal rows) or a display name (display values).
    pub author: String,
    pub value: String,
}

impl JournalEntry {
    /// The same for one note whichever path read it: field, UTC time and text.
    pub fn key(&self, record_sys_id: &str) -> String {
        let text = format!(
            "{record_sys_id}\n{}\n{}\n{}",
            self.element,
            self.created_on,
            self.value.trim()
        );
        format!("note:{}", digest(&text))
    }

    /// A `sys_journal_field` row (from the API or a webhook body); `None` for another field,
    /// or without its time or text.
    pub fn from_row(row: &Value) -> Option<JournalEntry> {
        let text = |f: &str| match row.get(f) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Object(o)) => o.get("value").and_then(Value::as_str).map(str::to_owned),
            _ => None,
        };
        let element = text("element").filter(|e| ELEMENTS.iter().any(|(name, _)| name == e))?;
        Some(JournalEntry {
            element,
            // Without its time a note could not be matched with the same note read later.
            created_on: text("sys_created_on").filter(|t| !t.is_empty())?,
            author: text("sys_created_by").unwrap_or_default(),
            value: text("value").filter(|v| !v.is_empty())?,
        })
    }

    /// The entry as the `sys_journal_field` row [`Self::from_row`] reads back.
    pub fn to_row(&self) -> Value {
        serde_json::json!({
            "element": self.element,
            "sys_created_on": self.created_on,
            "sys_created_by": self.author,
            "value": self.value,
        })
    }
}

/// The notes of a record, by the connection's `journal` path; empty when the record is gone
/// or hidden.
pub async fn read(
    sn: &ServiceNowConnection,
    http: &Outbound,
    table: &str,
    sys_id: &str,
) -> Result<Vec<JournalEntry>, StepError> {
    match sn.config.journal {
        JournalSource::SysJournalField => {
            let query = format!(
                "element_id={sys_id}^elementINwork_notes,comments^ORDERBYsys_created_on^ORDERBYsys_id"
            );
            let rows = sn
                .query(
                    http,
                    "sys_journal_field",
                    &query,
                    Some("sys_id,element,value,sys_created_on,sys_created_by"),
                    1000,
                )
                .await?;
            Ok(rows.iter().filter_map(JournalEntry::from_row).collect())
        }
        JournalSource::DisplayValues => {
            let fields = "sys_id,sys_updated_on,work_notes,comments";
            let Some(record) = sn.display_values(http, table, sys_id, fields).await? else {
                return Ok(Vec::new());
            };
            from_display_values(&record).map_err(|e| {
                StepError::Response(format!("{table} {sys_id}: {e} ({})", sn.config_table()))
            })
        }
    }
}

/// The entries of a record read with `sysparm_display_value=all`, oldest first, their times
/// turned back to UTC by the offset between `sys_updated_on`'s value and display value (the
/// user's time zone, §2.7; XSOAR does the same).
pub fn from_display_values(record: &Value) -> Result<Vec<JournalEntry>, String> {
    let updated = &record["sys_updated_on"];
    let parse = |v: &Value| {
        chrono::NaiveDateTime::parse_from_str(v.as_str().unwrap_or_default(), TIME_FORMAT).ok()
    };
    let offset = match (parse(&updated["display_value"]), parse(&updated["value"])) {
        (Some(display), Some(raw)) => display - raw,
        _ => return Err(unreadable("sys_updated_on")),
    };
    let mut entries = Vec::new();
    for (element, label) in ELEMENTS {
        let text = record[*element]["display_value"]
            .as_str()
            .unwrap_or_default();
        entries.extend(parse_entries(text, element, label, offset)?);
    }
    entries.sort_by(|a, b| a.created_on.cmp(&b.created_on));
    Ok(entries)
}

fn unreadable(field: &str) -> String {
    format!(
        "the display value of {field} is not in the form yyyy-MM-dd HH:mm:ss; set the integration user's date and time format to it, or read notes from sys_journal_field (journal = \"sys_journal_field\", needs the audit_viewer role)"
    )
}

/// `<date> <time> - <Full Name> (<label>)\n<text>` entries, each ended by a blank line (§4.2).
fn parse_entries(
    text: &str,
    element: &str,
    label: &str,
    offset: chrono::Duration,
) -> Result<Vec<JournalEntry>, String> {
    let suffix = format!(" ({label})");
    let mut entries: Vec<JournalEntry> = Vec::new();
    for line in text.lines() {
        let header = line.strip_suffix(&suffix).and_then(|head| {
            let (time, author) = head.split_once(" - ")?;
            let time = chrono::NaiveDateTime::parse_from_str(time, TIME_FORMAT).ok()?;
            Some(((time - offset).format(TIME_FORMAT).to_string(), author))
        });
        match (header, entries.last_mut()) {
            (Some((created_on, author)), _) => entries.push(JournalEntry {
                element: element.to_owned(),
                created_on,
                author: author.to_owned(),
                value: String::new(),
            }),
            (None, Some(entry)) => {
                if !entry.value.is_empty() || !line.is_empty() {
                    entry.value.push_str(line);
                    entry.value.push('\n');
                }
            }
            (None, None) if line.trim().is_empty() => {}
            (None, None) => return Err(unreadable(element)),
        }
    }
    for entry in &mut entries {
        entry.value = entry.value.trim_end_matches('\n').to_owned();
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn display_values_split_into_entries_in_utc() {
        let record = json!({
            "sys_updated_on": {"value": "2026-01-01 10:00:00", "display_value": "2026-01-01 11:00:00"},
            "work_notes": {"value": "", "display_value":
                "2026-01-01 11:00:00 - Abel Tuter (Work notes)\nSecond\n\nwith a blank line\n\n2026-01-01 10:30:00 - Beth Anglin (Work notes)\nFirst\n\n"},
            "comments": {"value": "", "display_value": ""}
        });
        let entries = from_display_values(&record).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[0].created_on, "2026-01-01 09:30:00");
        assert_eq!(entries[0].author, "Beth Anglin");
        assert_eq!(entries[0].value, "First");
        assert_eq!(entries[1].value, "Second\n\nwith a blank line");
        let row = json!({"element": "work_notes", "sys_created_on": "2026-01-01 09:30:00",
                         "sys_created_by": "beth.anglin", "value": "First\n"});
        assert_eq!(
            JournalEntry::from_row(&row).unwrap().key("x"),
            entries[0].key("x"),
            "one key whichever path read the note"
        );
    }

    #[test]
    fn another_date_format_is_an_error_that_names_the_fix() {
        let record = json!({
            "sys_updated_on": {"value": "2026-01-01 10:00:00", "display_value": "01/01/2026 10:00"},
        });
        let error = from_display_values(&record).unwrap_err();
        assert!(error.contains("yyyy-MM-dd HH:mm:ss"), "{error}");
    }
}
