//! The mappings of one connection: a Halo ticket's fields to a ServiceNow record's, and
//! statuses both ways. Pure functions, so each rule is tested on its own.

use serde_json::{Map, Value, json};

use super::config::{
    CustomFieldMapping, PriorityMapping, ServiceNowConnectionConfig, ValueMapping,
};

/// Tables a record can be created in (§2.1): tasks go to task child tables, never `task`.
pub const RECORD_TYPES: &[&str] = &[
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

/// Whether a mapping restricted to `filter` applies to `table`: none applies everywhere,
/// `task` to every table but incident, anything else to that table only.
pub fn applies(filter: Option<&str>, table: &str) -> bool {
    match filter {
        None => true,
        Some("task") => table != "incident",
        Some(wanted) => wanted == table,
    }
}

/// The field that names a child's parent record of `parent_table`, beyond the generic
/// `parent` (§2.3, §2.5): an incident task's `incident`, a problem task's `problem`...
pub fn parent_field(table: &str, parent_table: &str) -> Option<&'static str> {
    Some(match (table, parent_table) {
        ("incident", "incident") => "parent_incident",
        ("incident", "problem") => "problem_id",
        ("incident_task", "incident") => "incident",
        ("problem_task", "problem") => "problem",
        ("change_task", "change_request") => "change_request",
        ("sc_task", "sc_req_item") => "request_item",
        ("sc_task" | "sc_req_item", "sc_request") => "request",
        _ => return None,
    })
}

/// The state a record created from Halo starts in: New (§2.3, §2.4).
pub fn new_state(table: &str) -> &'static str {
    match table {
        "problem" => "101",
        "change_request" | "change_task" => "-5",
        "problem_task" => "151",
        _ => "1",
    }
}

/// A Halo value as text for comparing with mappings: ids arrive as `3`, `3.0` or `"3"`.
pub fn halo_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(match n.as_f64() {
            Some(f) if f.fract() == 0.0 => format!("{}", f as i64),
            _ => n.to_string(),
        }),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn toml_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Float(f) if f.fract() == 0.0 => format!("{}", *f as i64),
        other => other.to_string(),
    }
}

/// The ServiceNow value mapped from a Halo value, for `table`.
fn map_value(mappings: &[ValueMapping], halo: &Value, table: &str) -> Option<String> {
    let halo = halo_text(halo)?;
    mappings
        .iter()
        .find(|m| applies(m.table.as_deref(), table) && toml_text(&m.halo) == halo)
        .map(|m| m.servicenow.clone())
}

/// The priority mapping for a Halo priority, for `table`.
fn priority_mapping<'a>(
    mappings: &'a [PriorityMapping],
    halo: &Value,
    table: &str,
) -> Option<&'a PriorityMapping> {
    let halo = halo_text(halo)?;
    mappings
        .iter()
        .find(|m| applies(m.table.as_deref(), table) && toml_text(&m.halo) == halo)
}

/// The Halo priority a record maps back to: by its priority where a mapping names one, else
/// by its impact and urgency.
fn priority_back(
    config: &ServiceNowConnectionConfig,
    table: &str,
    record: &Value,
) -> Option<Value> {
    let (priority, impact, urgency) = (
        field_text(record, "priority"),
        field_text(record, "impact"),
        field_text(record, "urgency"),
    );
    config
        .priority
        .iter()
        .filter(|m| applies(m.table.as_deref(), table))
        .find(|m| match &m.servicenow {
            Some(p) => priority.as_ref() == Some(p),
            None => m.impact == impact && m.urgency == urgency,
        })
        .map(|m| toml_json(&m.halo))
}

/// The fields of a record created from `ticket` in `table` (without caller, parent,
/// correlation id and state, which need lookups or the step run).
pub fn record_fields(
    config: &ServiceNowConnectionConfig,
    table: &str,
    ticket: &Value,
) -> Map<String, Value> {
    let mut fields = Map::new();
    if let Some(summary) = ticket.get("summary").and_then(Value::as_str) {
        fields.insert("short_description".into(), json!(summary));
    }
    if let Some(details) = ticket.get("details").and_then(Value::as_str) {
        fields.insert("description".into(), json!(details));
    }
    insert_category(config, table, ticket, &mut fields);
    insert_priority(config, table, ticket, &mut fields);
    let group = ticket
        .get("team")
        .and_then(|team| map_value(&config.assignment_group, team, table))
        .or_else(|| config.default_assignment_group.clone());
    if let Some(group) = group {
        fields.insert("assignment_group".into(), json!(group));
    }
    let custom = ticket
        .get("customfields")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    apply_custom_fields(&config.custom_fields, &custom, table, &mut fields);
    if let Some(service_id) = ticket.get("service_id").and_then(halo_text)
        && let Some(service) = config
            .services
            .iter()
            .find(|s| s.halo_service_id.to_string() == service_id)
    {
        fields.insert("business_service".into(), json!(service.servicenow_service));
        apply_custom_fields(&service.custom_fields, &custom, table, &mut fields);
    }
    fields
}

/// The category (and subcategory) the ticket's first category maps to. Categories are for
/// incidents only; tasks get none (the seed).
fn insert_category(
    config: &ServiceNowConnectionConfig,
    table: &str,
    ticket: &Value,
    fields: &mut Map<String, Value>,
) {
    if table == "incident"
        && let Some(category) = ticket.get("category_1").and_then(Value::as_str)
        && let Some(m) = config
            .category
            .iter()
            .find(|m| applies(m.table.as_deref(), table) && m.halo == category)
    {
        fields.insert("category".into(), json!(m.category));
        if let Some(sub) = &m.subcategory {
            fields.insert("subcategory".into(), json!(sub));
        }
    }
}

/// Priority, impact and urgency: the priority mapping's first, then the ticket's own impact
/// and urgency mappings, which are more specific.
fn insert_priority(
    config: &ServiceNowConnectionConfig,
    table: &str,
    ticket: &Value,
    fields: &mut Map<String, Value>,
) {
    if let Some(m) = ticket
        .get("priority_id")
        .and_then(|p| priority_mapping(&config.priority, p, table))
    {
        for (field, value) in [
            ("priority", &m.servicenow),
            ("impact", &m.impact),
            ("urgency", &m.urgency),
        ] {
            if let Some(value) = value {
                fields.insert(field.into(), json!(value));
            }
        }
    }
    for (halo_field, mappings, field) in [
        ("impact", &config.impact, "impact"),
        ("urgency", &config.urgency, "urgency"),
    ] {
        if let Some(value) = ticket
            .get(halo_field)
            .and_then(|v| map_value(mappings, v, table))
        {
            fields.insert(field.into(), json!(value));
        }
    }
}

/// Writes mapped Halo custom fields (`[{id, value}]`) into `fields`; single-select values go
/// through the mapping's value map.
fn apply_custom_fields(
    mappings: &[CustomFieldMapping],
    custom: &[Value],
    table: &str,
    fields: &mut Map<String, Value>,
) {
    for mapping in mappings
        .iter()
        .filter(|m| applies(m.table.as_deref(), table))
    {
        let value = custom
            .iter()
            .find(|f| f.get("id").and_then(halo_text) == Some(mapping.halo_field_id.to_string()))
            .and_then(|f| f.get("value"))
            .and_then(halo_text);
        if let Some(value) = value {
            let mapped = mapping.values.get(&value).cloned().unwrap_or(value);
            fields.insert(mapping.servicenow_field.clone(), json!(mapped));
        }
    }
}

/// A TOML mapping value as JSON (Halo ids stay numbers).
fn toml_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::Integer(i) => json!(i),
        toml::Value::Float(f) if f.fract() == 0.0 => json!(*f as i64),
        toml::Value::Float(f) => json!(f),
        toml::Value::Boolean(b) => json!(b),
        other => json!(toml_text(other)),
    }
}

/// The Halo value a ServiceNow value maps back to, for `table`.
fn map_back(mappings: &[ValueMapping], servicenow: &str, table: &str) -> Option<Value> {
    mappings
        .iter()
        .find(|m| applies(m.table.as_deref(), table) && m.servicenow == servicenow)
        .map(|m| toml_json(&m.halo))
}

/// A record field as plain text (raw values; a reference may come as `{value, link}`).
fn field_text(record: &Value, field: &str) -> Option<String> {
    match record.get(field)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Object(o) => o.get("value").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

/// The Halo ticket fields a ServiceNow record maps to, the mappings read backwards: status,
/// priority, impact, urgency, category (incidents), team, custom fields. Values without a
/// mapping are left out, so Halo keeps its own.
pub fn halo_fields(
    config: &ServiceNowConnectionConfig,
    table: &str,
    record: &Value,
) -> Map<String, Value> {
    let mut fields = Map::new();
    if let Some(priority) = priority_back(config, table, record) {
        fields.insert("priority_id".into(), priority);
    }
    for (field, mappings, halo) in [
        ("state", &config.status, "status_id"),
        ("impact", &config.impact, "impact"),
        ("urgency", &config.urgency, "urgency"),
        ("assignment_group", &config.assignment_group, "team"),
    ] {
        if let Some(value) = field_text(record, field).and_then(|v| map_back(mappings, &v, table)) {
            fields.insert(halo.into(), value);
        }
    }
    if table == "incident"
        && let Some(category) = field_text(record, "category")
    {
        let subcategory = field_text(record, "subcategory");
        let found = config
            .category
            .iter()
            .filter(|m| applies(m.table.as_deref(), table) && m.category == category)
            .find(|m| m.subcategory.is_none() || m.subcategory == subcategory);
        if let Some(m) = found {
            fields.insert("category_1".into(), json!(m.halo));
        }
    }
    let mut custom = Vec::new();
    for mapping in config
        .custom_fields
        .iter()
        .filter(|m| applies(m.table.as_deref(), table))
    {
        if let Some(value) = field_text(record, &mapping.servicenow_field) {
            let halo = mapping
                .values
                .iter()
                .find(|(_, sn)| **sn == value)
                .map(|(halo, _)| halo.clone())
                .unwrap_or(value);
            custom.push(json!({"id": mapping.halo_field_id, "value": halo}));
        }
    }
    if !custom.is_empty() {
        fields.insert("customfields".into(), Value::Array(custom));
    }
    fields
}

/// The ServiceNow state for a Halo status id, by the status mapping.
pub fn state_for_status(
    config: &ServiceNowConnectionConfig,
    table: &str,
    status_id: &Value,
) -> Option<String> {
    map_value(&config.status, status_id, table)
}

/// The Halo status id for a ServiceNow state (the mapping read backwards).
pub fn status_for_state(
    config: &ServiceNowConnectionConfig,
    table: &str,
    state: &str,
) -> Option<String> {
    config
        .status
        .iter()
        .find(|m| applies(m.table.as_deref(), table) && m.servicenow == state)
        .map(|m| toml_text(&m.halo))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ServiceNowConnectionConfig {
        let text = r#"
            [servicenow.customers.12]
            instance_url = "https://acme.service-now.com"
            auth = "basic"
            username = "u"
            password_secret_name = "P"
            default_assignment_group = "grp-default"
            status = [{ halo = 1, servicenow = "1" }, { halo = 2, servicenow = "2", table = "incident" },
                      { halo = 2, servicenow = "3", table = "task" }]
            category = [{ halo = "Hardware", category = "hardware", subcategory = "disk" }]
            priority = [{ halo = 2, servicenow = "2" }, { halo = 1, impact = "1", urgency = "1" }]
            impact = [{ halo = 2, servicenow = "1", table = "incident" }, { halo = 2, servicenow = "3", table = "task" }]
            urgency = [{ halo = "2", servicenow = "2" }]
            assignment_group = [{ halo = "Service Desk", servicenow = "grp-sd" }]
            custom_fields = [{ halo_field_id = 178, servicenow_field = "u_severity", values = { "1" = "sev-high" } }]
            services = [{ halo_service_id = 5, servicenow_service = "svc-email", custom_fields = [
                { halo_field_id = 179, servicenow_field = "u_mailbox" }] }]
        "#;
        let config = haloflow_core::engine::integration::Integrations::new()
            .with(crate::ServiceNow)
            .parse_config(text)
            .unwrap();
        config
            .section::<crate::ServiceNowConfig>()
            .unwrap()
            .customers["12"]
            .clone()
    }

    fn ticket() -> Value {
        json!({"summary": "Disk full", "details": "C: at 97%", "category_1": "Hardware",
               "priority_id": 2, "impact": 2.0, "urgency": "2", "team": "Service Desk",
               "status_id": 2, "service_id": 5,
               "customfields": [{"id": 178, "value": 1}, {"id": 179, "value": "ops@acme"}]})
    }

    #[test]
    fn an_incident_gets_every_mapped_field() {
        let fields = Value::Object(record_fields(&config(), "incident", &ticket()));
        assert_eq!(
            fields,
            json!({"short_description": "Disk full", "description": "C: at 97%",
                   "category": "hardware", "subcategory": "disk", "priority": "2", "impact": "1",
                   "urgency": "2", "assignment_group": "grp-sd", "u_severity": "sev-high",
                   "business_service": "svc-email", "u_mailbox": "ops@acme"})
        );
    }

    #[test]
    fn a_task_gets_no_category_and_its_own_mappings() {
        let fields = record_fields(&config(), "sc_task", &ticket());
        assert!(!fields.contains_key("category") && !fields.contains_key("subcategory"));
        assert_eq!(fields["impact"], "3", "the task-only impact mapping");
    }

    #[test]
    fn an_unmapped_team_gets_the_default_group() {
        let mut ticket = ticket();
        ticket["team"] = json!("Nobody");
        assert_eq!(
            record_fields(&config(), "incident", &ticket)["assignment_group"],
            "grp-default"
        );
    }

    #[test]
    fn a_record_maps_back_to_halo_fields() {
        let record = json!({"state": "2", "priority": "2", "impact": "1", "urgency": "2",
                            "category": "hardware", "subcategory": "disk",
                            "assignment_group": {"value": "grp-sd", "link": "x"},
                            "u_severity": "sev-high", "short_description": "ignored"});
        let fields = Value::Object(halo_fields(&config(), "incident", &record));
        assert_eq!(
            fields,
            json!({"status_id": 2, "priority_id": 2, "impact": 2, "urgency": "2",
                   "team": "Service Desk", "category_1": "Hardware",
                   "customfields": [{"id": 178, "value": "1"}]})
        );
        let task = halo_fields(
            &config(),
            "sc_task",
            &json!({"category": "hardware", "state": "3"}),
        );
        assert!(!task.contains_key("category_1"));
        assert_eq!(task["status_id"], 2);
    }

    #[test]
    fn a_priority_goes_as_impact_and_urgency_unless_named() {
        let fields = record_fields(&config(), "problem", &json!({"priority_id": 1}));
        assert_eq!(
            Value::Object(fields),
            json!({"impact": "1", "urgency": "1", "assignment_group": "grp-default"})
        );
        let back = halo_fields(
            &config(),
            "problem",
            &json!({"priority": "1", "impact": "1", "urgency": "1"}),
        );
        assert_eq!(back["priority_id"], 1);
        assert_eq!(parent_field("incident_task", "incident"), Some("incident"));
        assert_eq!(parent_field("sc_task", "incident"), None);
        let both = haloflow_core::engine::integration::Integrations::new()
            .with(crate::ServiceNow)
            .parse_config(
            "[servicenow.customers.1]\ninstance_url = \"https://a.service-now.com\"\nauth = \"basic\"\nusername = \"u\"\npassword_secret_name = \"P\"\npriority = [{ halo = 1, servicenow = \"1\", impact = \"1\" }]",
        );
        assert!(both.unwrap_err().contains("not both"));
    }

    #[test]
    fn statuses_map_both_ways_per_type() {
        let c = config();
        assert_eq!(
            state_for_status(&c, "incident", &json!(2)).as_deref(),
            Some("2")
        );
        assert_eq!(
            state_for_status(&c, "sc_task", &json!(2)).as_deref(),
            Some("3")
        );
        assert_eq!(status_for_state(&c, "sc_task", "3").as_deref(), Some("2"));
        assert_eq!(status_for_state(&c, "incident", "3"), None);
        assert_eq!(new_state("incident"), "1");
        assert_eq!(new_state("problem"), "101");
    }
}
