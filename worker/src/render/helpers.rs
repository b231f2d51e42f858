//! The Handlebars helpers of every template (`datetime`, `date`, `time`, `money`, `plural`,
//! listed in the module map of [`super`]) and the `if` / `unless` conditionals, strict at load
//! time. [`register`] installs them in a registry.

use chrono::{DateTime, FixedOffset, NaiveDate};
use chrono_tz::Tz;
use handlebars::{
    Context, Handlebars, Helper, HelperDef, HelperResult, JsonTruthy, Output, PathAndJson, RenderContext, RenderError, RenderErrorReason,
    Renderable, ScopedJson,
};
use serde_json::Value;

/// Registers the value helpers and the lenient conditionals in `hb`.
pub(super) fn register(hb: &mut Handlebars<'static>) {
    hb.register_helper("datetime", Box::new(ValueHelper(datetime_helper)));
    hb.register_helper("date", Box::new(ValueHelper(date_helper)));
    hb.register_helper("time", Box::new(ValueHelper(time_helper)));
    hb.register_helper("money", Box::new(ValueHelper(money_helper)));
    hb.register_helper("plural", Box::new(ValueHelper(plural_helper)));
    set_conditionals(hb, false);
}

/// `if` / `unless`; when `strict`, a condition on an unknown field is an error
/// (used only for the load-time check, where every field is present).
#[derive(Clone, Copy)]
struct Conditional {
    negate: bool,
    strict: bool,
}

impl HelperDef for Conditional {
    fn call<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        r: &'reg Handlebars<'reg>,
        ctx: &'rc Context,
        rc: &mut RenderContext<'reg, 'rc>,
        out: &mut dyn Output,
    ) -> HelperResult {
        let name = if self.negate { "unless" } else { "if" };
        let param = h.param(0).ok_or(RenderErrorReason::ParamNotFoundForIndex(name, 0))?;
        if self.strict && param.is_value_missing() {
            return Err(RenderError::strict_error(param.relative_path()));
        }
        let include_zero = h.hash_get("includeZero").and_then(|v| v.value().as_bool()).unwrap_or(false);
        let truthy = param.value().is_truthy(include_zero) != self.negate;
        match if truthy { h.template() } else { h.inverse() } {
            Some(t) => t.render(r, ctx, rc, out),
            None => Ok(()),
        }
    }
}

pub(super) fn set_conditionals(hb: &mut Handlebars<'static>, strict: bool) {
    hb.register_helper("if", Box::new(Conditional { negate: false, strict }));
    hb.register_helper("unless", Box::new(Conditional { negate: true, strict }));
}

/// A helper computing a string from its parameters. Its result goes through
/// the registry's escaping like any value, and it works in subexpressions.
struct ValueHelper(fn(&Helper<'_>) -> Result<String, String>);

impl HelperDef for ValueHelper {
    fn call_inner<'reg: 'rc, 'rc>(
        &self,
        h: &Helper<'rc>,
        _: &'reg Handlebars<'reg>,
        _: &'rc Context,
        _: &mut RenderContext<'reg, 'rc>,
    ) -> Result<ScopedJson<'rc>, RenderError> {
        match (self.0)(h) {
            Ok(s) => Ok(ScopedJson::Derived(Value::String(s))),
            Err(message) => Err(RenderErrorReason::Other(format!("helper `{}`: {message}", h.name())).into()),
        }
    }
}

/// The `i`-th parameter, failing when it is absent or names an unknown field.
fn param<'a>(h: &'a Helper<'_>, i: usize, what: &str) -> Result<&'a PathAndJson<'a>, String> {
    let p = h.param(i).ok_or_else(|| format!("expects {what} as argument {}", i + 1))?;
    if p.is_value_missing() {
        let path = p.relative_path().map_or("?", String::as_str);
        return Err(format!("unknown field `{path}` given as {what}"));
    }
    Ok(p)
}

fn param_str<'a>(h: &'a Helper<'_>, i: usize, what: &str) -> Result<&'a str, String> {
    let p = param(h, i, what)?;
    p.value()
        .as_str()
        .ok_or_else(|| format!("expects {what} as a string, got {}", p.value()))
}

fn timezone(h: &Helper<'_>, i: usize) -> Result<Tz, String> {
    let name = param_str(h, i, "an IANA time zone")?;
    name.parse::<Tz>().map_err(|_| format!("unknown time zone {name:?}"))
}

fn instant(h: &Helper<'_>) -> Result<DateTime<FixedOffset>, String> {
    let s = param_str(h, 0, "an RFC 3339 time")?;
    DateTime::parse_from_rfc3339(s).map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}"))
}

fn local(h: &Helper<'_>) -> Result<DateTime<Tz>, String> {
    let t = instant(h)?;
    let tz = timezone(h, 1)?;
    Ok(t.with_timezone(&tz))
}

const DATE_FORMAT: &str = "%A %-d %B";
const TIME_FORMAT: &str = "%H:%M";

/// `{{datetime t tz}}` → `Tuesday 3 March, 17:30`.
fn datetime_helper(h: &Helper<'_>) -> Result<String, String> {
    let t = local(h)?;
    Ok(format!("{}, {}", t.format(DATE_FORMAT), t.format(TIME_FORMAT)))
}

/// `{{date t tz}}` → `Tuesday 3 March`; a bare `YYYY-MM-DD` is taken as is.
fn date_helper(h: &Helper<'_>) -> Result<String, String> {
    let s = param_str(h, 0, "an RFC 3339 time")?;
    if let Ok(day) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        return Ok(day.format(DATE_FORMAT).to_string());
    }
    Ok(local(h)?.format(DATE_FORMAT).to_string())
}

/// `{{time t tz}}` → `17:30`.
fn time_helper(h: &Helper<'_>) -> Result<String, String> {
    Ok(local(h)?.format(TIME_FORMAT).to_string())
}

/// `{{money minor currency}}` → `£45.00`.
fn money_helper(h: &Helper<'_>) -> Result<String, String> {
    let p = param(h, 0, "an amount in minor units")?;
    let minor = match p.value() {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
    .ok_or_else(|| format!("expects an integer amount in minor units, got {}", p.value()))?;
    let currency = param_str(h, 1, "a currency code")?;
    if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(format!("{currency:?} is not an ISO 4217 currency code"));
    }
    Ok(format_money(minor, &currency.to_ascii_uppercase()))
}

pub(super) fn format_money(minor: i64, currency: &str) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    let units = (abs / 100).to_string();
    let mut grouped = String::with_capacity(units.len() + units.len() / 3);
    for (i, c) in units.chars().enumerate() {
        if i > 0 && (units.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let amount = format!("{grouped}.{:02}", abs % 100);
    match currency {
        "GBP" => format!("{sign}£{amount}"),
        "EUR" => format!("{sign}€{amount}"),
        "USD" => format!("{sign}${amount}"),
        other => format!("{sign}{amount} {other}"),
    }
}

/// `{{plural n "lesson"}}` → `1 lesson`, `2 lessons`; `{{plural n "person" "people"}}`.
fn plural_helper(h: &Helper<'_>) -> Result<String, String> {
    let p = param(h, 0, "a count")?;
    let n = p
        .value()
        .as_i64()
        .ok_or_else(|| format!("expects an integer count, got {}", p.value()))?;
    let one = param_str(h, 1, "the singular word")?;
    if n == 1 {
        return Ok(format!("1 {one}"));
    }
    match h.param(2) {
        Some(_) => Ok(format!("{n} {}", param_str(h, 2, "the plural word")?)),
        None => Ok(format!("{n} {one}s")),
    }
}
