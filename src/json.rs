//! JSON building without copies. `serde_json::json!` serialises every interpolated value into a
//! new one (`to_value`), which for a ticket or a trigger payload is a deep copy; building the
//! object from owned values moves them instead.

use serde_json::{Map, Value};

/// An object of `fields`, in order, the values moved in.
pub fn object<const N: usize>(fields: [(&str, Value); N]) -> Value {
    let mut map = Map::with_capacity(N);
    for (key, value) in fields {
        map.insert(key.to_owned(), value);
    }
    Value::Object(map)
}

/// An integer id written as a number, `"42"` or `"42.0"` (Halo sends all three, halo-api.md §2).
pub fn id_of(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.fract() == 0.0)
            .map(|f| f as i64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn builds_the_same_object_as_the_macro() {
        let ticket = json!({"id": 7, "summary": "s"});
        assert_eq!(
            object([("ticket_id", json!(7)), ("ticket", ticket.clone())]),
            json!({"ticket_id": 7, "ticket": ticket})
        );
    }
}
