//! What the ServiceNow emulator knows about an instance beyond HTTP
//! (`../shared/reference/servicenow-api.md`): the dictionary of the tables it models (§2.2,
//! §2.3, §2.5), the calculatePriority business rule (§2.2), table inheritance under `task`
//! (§2.1), the roles that guard tables (§4.2) and the display form of journal fields (§4.2
//! Option B).

/// Fields every task table has (§2.2). `sys_` fields are system fields, never writable.
const TASK_FIELDS: &[&str] = &[
    "number",
    "short_description",
    "description",
    "state",
    "priority",
    "impact",
    "urgency",
    "assignment_group",
    "assigned_to",
    "parent",
    "comments",
    "work_notes",
    "comments_and_work_notes",
    "watch_list",
    "work_notes_list",
    "correlation_id",
    "correlation_display",
    "opened_at",
    "opened_by",
    "closed_at",
    "closed_by",
    "close_notes",
    "active",
    "approval",
    "company",
    "location",
    "cmdb_ci",
    "business_service",
    "contact_type",
    "due_date",
];

/// The fields a table adds to `task` (§2.3, §2.5, §2.6), or `None` for a table that is not a
/// task child.
fn task_specifics(table: &str) -> Option<&'static [&'static str]> {
    Some(match table {
        "incident" => &[
            "incident_state",
            "hold_reason",
            "close_code",
            "severity",
            "category",
            "subcategory",
            "caller_id",
            "parent_incident",
            "child_incidents",
            "problem_id",
            "rfc",
            "caused_by",
            "resolved_at",
            "resolved_by",
        ],
        "incident_task" => &["incident"],
        "problem" => &[
            "category",
            "subcategory",
            "known_error",
            "cause_notes",
            "fix_notes",
            "first_reported_by_task",
        ],
        "problem_task" => &["problem"],
        "change_request" => &[
            "type",
            "category",
            "risk",
            "start_date",
            "end_date",
            "requested_by",
            "reason",
            "implementation_plan",
            "backout_plan",
            "test_plan",
        ],
        "change_task" => &["change_request", "change_task_type"],
        "sc_request" => &["requested_for", "request_state", "stage"],
        "sc_req_item" => &["request", "cat_item", "requested_for", "stage", "quantity"],
        "sc_task" => &["request", "request_item"],
        _ => return None,
    })
}

/// The task child tables the emulator models: `task` reads return their records (§2.1).
/// The instance's own list, kept apart from haloflow's `RECORD_TYPES`: the emulator must not
/// learn a table because haloflow starts sending it.
pub(crate) const TASK_TABLES: &[&str] = &[
    "incident",
    "incident_task",
    "problem",
    "problem_task",
    "change_request",
    "change_task",
    "sc_request",
    "sc_req_item",
    "sc_task",
];

/// Fields of the other tables the emulator models.
fn other_fields(table: &str) -> Option<&'static [&'static str]> {
    Some(match table {
        "sys_user" => &[
            "user_name",
            "first_name",
            "last_name",
            "name",
            "email",
            "active",
            "title",
            "department",
            "time_zone",
            "phone",
            "mobile_phone",
            "company",
            "location",
            "manager",
        ],
        "sys_user_group" => &[
            "name",
            "description",
            "active",
            "manager",
            "email",
            "type",
            "parent",
        ],
        "sys_journal_field" => &["element", "element_id", "name", "value", "sys_tags"],
        "sys_choice" => &[
            "name",
            "element",
            "value",
            "label",
            "dependent_value",
            "language",
            "inactive",
        ],
        _ => return None,
    })
}

/// The fields of a modelled table's dictionary (without system fields); `None` for a table
/// the emulator does not model.
pub(crate) fn fields_of(table: &str) -> Option<Vec<&'static str>> {
    Some(match (table, task_specifics(table), other_fields(table)) {
        ("task", _, _) => TASK_FIELDS.to_vec(),
        (_, Some(specific), _) => TASK_FIELDS.iter().chain(specific).copied().collect(),
        (_, None, Some(fields)) => fields.to_vec(),
        _ => return None,
    })
}

/// Whether `field` is in `table`'s dictionary (system fields included); `extra` holds the
/// fields a test added (a customer's `u_` fields). `None` when the table is not modelled.
pub(crate) fn has_field(table: &str, field: &str, extra: &[String]) -> Option<bool> {
    let base = match fields_of(table) {
        Some(fields) => fields,
        None if extra.is_empty() => return None,
        None => Vec::new(),
    };
    Some(field.starts_with("sys_") || base.contains(&field) || extra.iter().any(|f| f == field))
}

pub(crate) fn is_task_table(table: &str) -> bool {
    TASK_TABLES.contains(&table)
}

/// calculatePriority (§2.2): the lookup matrix of impact and urgency, 1–3 each.
pub(crate) fn calculate_priority(impact: &str, urgency: &str) -> Option<String> {
    let level = |v: &str| v.parse::<u8>().ok().filter(|n| (1..=3).contains(n));
    Some((level(impact)? + level(urgency)? - 1).to_string())
}

/// The roles that read a table, when it is guarded (§4.2: `sys_journal_field` needs
/// `audit_viewer`; `admin` has every role).
pub(crate) fn read_role(table: &str) -> Option<&'static str> {
    match table {
        "sys_journal_field" | "sys_audit" | "sys_history_set" => Some("audit_viewer"),
        _ => None,
    }
}

/// The label a journal entry carries in the display value of its field (§4.2 Option B).
pub(crate) fn journal_label(element: &str) -> &'static str {
    match element {
        "work_notes" => "Work notes",
        _ => "Additional comments",
    }
}

/// A raw `YYYY-MM-DD HH:MM:SS` (UTC) shown in a user's time zone, `offset_minutes` east of UTC;
/// anything else is returned as it is.
pub(crate) fn display_time(raw: &str, offset_minutes: i32) -> String {
    match chrono::NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S") {
        Ok(time) => (time + chrono::Duration::minutes(i64::from(offset_minutes)))
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        Err(_) => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_priority_matrix_of_the_reference() {
        let table = [
            ("1", "1", "1"),
            ("1", "2", "2"),
            ("1", "3", "3"),
            ("2", "1", "2"),
            ("2", "2", "3"),
            ("2", "3", "4"),
            ("3", "1", "3"),
            ("3", "2", "4"),
            ("3", "3", "5"),
        ];
        for (impact, urgency, priority) in table {
            assert_eq!(
                calculate_priority(impact, urgency).as_deref(),
                Some(priority)
            );
        }
        assert_eq!(calculate_priority("4", "1"), None);
    }

    #[test]
    fn dictionaries() {
        assert_eq!(has_field("incident", "caller_id", &[]), Some(true));
        assert_eq!(has_field("sc_task", "caller_id", &[]), Some(false));
        assert_eq!(has_field("incident_task", "incident", &[]), Some(true));
        assert_eq!(has_field("incident", "sys_anything", &[]), Some(true));
        assert_eq!(has_field("u_custom", "x", &[]), None);
        assert_eq!(
            display_time("2026-01-01 23:30:00", 60),
            "2026-01-02 00:30:00"
        );
    }
}
