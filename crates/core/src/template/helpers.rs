//! Template helpers beyond handlebars' built-ins (`eq`, `ne`, `gt`, `lt`, `and`, `or`, `not`,
//! `len`, `if`, `each`, ...). Each returns a JSON value so it also works as a subexpression.

use handlebars::{
    Context, Handlebars, Helper, HelperDef, PathAndJson, RenderContext, RenderError,
    RenderErrorReason, ScopedJson,
};
use serde_json::Value;

pub(super) fn register(hb: &mut Handlebars<'static>) {
    hb.register_helper("default", Box::new(DefaultHelper));
    hb.register_helper("json", Box::new(ValueHelper("json", json)));
    hb.register_helper("lower", Box::new(ValueHelper("lower", lower)));
    hb.register_helper("upper", Box::new(ValueHelper("upper", upper)));
    hb.register_helper("join", Box::new(ValueHelper("join", join)));
    hb.register_helper("date", Box::new(ValueHelper("date", date)));
}

/// Names of every helper a template may call, for the load-time check.
pub(super) const HELPER_NAMES: &[&str] = &[
    "default", "json", "lower", "upper", "join", "date", // ours
    "if", "unless", "each", "with", "lookup", "log", "eq", "ne", "gt", "gte", "lt", "lte", "and",
    "or", "not", "len", // handlebars' built-ins
];

/// `{{default value "fallback"}}`: the value, or the fallback when the value is missing, null or
/// an empty string. The one helper that accepts a missing value in strict mode.
struct DefaultHelper;

impl HelperDef for DefaultHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let fallback = h
            .param(1)
            .ok_or(RenderErrorReason::ParamNotFoundForIndex("default", 1))?;
        let chosen = match h.param(0) {
            Some(p) if !p.is_value_missing() && !is_blank(p.value()) => p.value(),
            _ => fallback.value(),
        };
        Ok(ScopedJson::Derived(chosen.clone()))
    }
}

fn is_blank(value: &Value) -> bool {
    matches!(value, Value::Null) || value.as_str() == Some("")
}

type ValueFn = fn(&'static str, &[&PathAndJson<'_>]) -> Result<Value, RenderError>;

/// A helper that computes a value from its parameters, refusing missing ones (strict mode).
struct ValueHelper(&'static str, ValueFn);

impl HelperDef for ValueHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        let params: Vec<&PathAndJson<'_>> = h.params().iter().collect();
        for p in &params {
            if p.is_value_missing() {
                let path = p.relative_path().cloned();
                return Err(RenderErrorReason::MissingVariable(path).into());
            }
        }
        (self.1)(self.0, &params).map(ScopedJson::Derived)
    }
}

fn param<'a>(
    name: &'static str,
    params: &'a [&PathAndJson<'_>],
    i: usize,
) -> Result<&'a Value, RenderError> {
    params
        .get(i)
        .map(|p| p.value())
        .ok_or_else(|| RenderErrorReason::ParamNotFoundForIndex(name, i).into())
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn json(name: &'static str, params: &[&PathAndJson<'_>]) -> Result<Value, RenderError> {
    Ok(Value::String(param(name, params, 0)?.to_string()))
}

fn lower(name: &'static str, params: &[&PathAndJson<'_>]) -> Result<Value, RenderError> {
    Ok(Value::String(text(param(name, params, 0)?).to_lowercase()))
}

fn upper(name: &'static str, params: &[&PathAndJson<'_>]) -> Result<Value, RenderError> {
    Ok(Value::String(text(param(name, params, 0)?).to_uppercase()))
}

/// `{{join list ", "}}`; the separator defaults to `", "`.
fn join(name: &'static str, params: &[&PathAndJson<'_>]) -> Result<Value, RenderError> {
    let list = param(name, params, 0)?;
    let separator = params
        .get(1)
        .map(|p| text(p.value()))
        .unwrap_or_else(|| ", ".into());
    let joined = match list {
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(&separator),
        other => text(other),
    };
    Ok(Value::String(joined))
}

/// `{{date value "%Y-%m-%d %H:%M"}}`: formats an RFC 3339 time (or `"now"`) with a strftime
/// pattern, in UTC. Halo's timestamps carry 7 fractional digits, which RFC 3339 allows.
fn date(name: &'static str, params: &[&PathAndJson<'_>]) -> Result<Value, RenderError> {
    let value = text(param(name, params, 0)?);
    let format = params
        .get(1)
        .map(|p| text(p.value()))
        .unwrap_or_else(|| "%Y-%m-%dT%H:%M:%SZ".into());
    let time = if value == "now" {
        chrono::Utc::now()
    } else {
        chrono::DateTime::parse_from_rfc3339(&value)
            .map_err(|e| {
                RenderErrorReason::Other(format!("date: `{value}` is not an RFC 3339 time ({e})"))
            })?
            .with_timezone(&chrono::Utc)
    };
    let mut out = String::new();
    use std::fmt::Write;
    write!(out, "{}", time.format(&format))
        .map_err(|_| RenderErrorReason::Other(format!("date: invalid format `{format}`")))?;
    Ok(Value::String(out))
}
