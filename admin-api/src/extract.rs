//! Extractors whose rejections are [`ApiError`]s, never axum's plain-text ones:
//!
//! - [`ApiJson`]: a JSON body. Not JSON → 400 `malformed_json`; a missing field, a wrong type or
//!   an unacceptable value → 422 naming the field (found with `serde_path_to_error`); not
//!   `application/json` → 415; over the limit → 413. A string holding a control character (NUL
//!   included, which Postgres refuses in `text`) → 422 naming the field, before any handler
//!   runs; only the free-text fields of [`MULTILINE_FIELDS`] may hold line breaks and tabs.
//! - [`OptionalJson`]: the same, but an empty body is the type's default.
//! - [`ApiPath`]: path parameters; a malformed id → 404.
//! - [`ApiQuery`]: the query string; a bad value → 422 naming the parameter.
//!
//! Also the serde helpers for the wire formats of times: RFC 3339 instants with an offset, and
//! `HH:MM` wall-clock times.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Path, Request},
    http::{StatusCode, header, request::Parts},
};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON request body.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

/// A JSON request body that may be left out (empty), standing for `T::default()`.
#[derive(Debug, Clone)]
pub struct OptionalJson<T>(pub T);

/// Path parameters.
#[derive(Debug, Clone)]
pub struct ApiPath<T>(pub T);

/// Query-string parameters.
#[derive(Debug, Clone)]
pub struct ApiQuery<T>(pub T);

fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase())
        .is_some_and(|m| m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")))
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest(format!("could not read the request body: {}", rejection.body_text()))
        }
    })
}

fn join_path(parent: &str, child: &str) -> String {
    if parent.is_empty() || parent == "." {
        child.to_owned()
    } else {
        format!("{parent}.{child}")
    }
}

/// serde_json's message without its " at line 1 column 5" tail.
fn without_position(msg: &str) -> &str {
    match msg.rfind(" at line ") {
        Some(i) if msg[i..].contains(" column ") => &msg[..i],
        _ => msg,
    }
}

/// Classifies a deserialisation error of a JSON body.
fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    use serde_json::error::Category;
    let path = e.path().to_string();
    let inner = e.inner();
    match inner.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::MalformedJson(format!("the body is not valid JSON: {inner}")),
        Category::Data => {
            let msg = without_position(&inner.to_string()).to_owned();
            let at = if path.is_empty() || path == "." { None } else { Some(path.clone()) };
            if let Some(name) = msg.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
                let field = join_path(&path, name);
                ApiError::Invalid {
                    code: "missing_field",
                    message: format!("{field}: this field is required"),
                    field: Some(field),
                }
            } else if msg.starts_with("invalid type") || msg.starts_with("invalid length") {
                let message = match &at {
                    Some(f) => format!("{f}: {msg}"),
                    None => format!("the body has the wrong shape: {msg}"),
                };
                ApiError::Invalid {
                    code: "invalid_type",
                    field: at,
                    message,
                }
            } else if msg.starts_with("unknown field `") {
                let name = msg.trim_start_matches("unknown field `").split('`').next().unwrap_or_default();
                // serde_path_to_error already includes the unknown key in the path.
                let field = if at.as_deref().is_some_and(|p| p == name || p.ends_with(&format!(".{name}"))) {
                    at.unwrap_or_default()
                } else {
                    join_path(&path, name)
                };
                ApiError::Invalid {
                    code: "unknown_field",
                    message: format!("{field}: {msg}"),
                    field: Some(field),
                }
            } else {
                let message = match &at {
                    Some(f) => format!("{f}: {msg}"),
                    None => msg.clone(),
                };
                ApiError::Invalid {
                    code: "invalid_value",
                    field: at,
                    message,
                }
            }
        }
    }
}

/// The fields meant to hold several lines of free text: they may contain `\n`, `\r` and `\t`.
/// Every other string (names, addresses, ids, …) may hold no control character at all, and none
/// may hold NUL.
pub const MULTILINE_FIELDS: &[&str] = &["notes", "content", "reason", "bio", "description"];

/// Why a string is refused, if it is: NUL or another control character (C0, DEL, C1); line
/// breaks and tabs only where `multiline`.
fn control_problem(s: &str, multiline: bool) -> Option<String> {
    let bad = s
        .chars()
        .find(|&c| c.is_control() && !(multiline && matches!(c, '\n' | '\r' | '\t')))?;
    Some(if bad == '\0' {
        "must not contain the NUL character".to_owned()
    } else if multiline {
        format!(
            "must not contain control characters other than line breaks and tabs (found U+{:04X})",
            bad as u32
        )
    } else {
        format!(
            "must not contain control characters such as line breaks (found U+{:04X})",
            bad as u32
        )
    })
}

/// Walks a JSON document and refuses the first string (object keys included) with a control
/// character, naming its path (`student.notes`, `skills[1].notes`). A string's field is the
/// nearest object key above it, so the strings of an array take their array's name.
fn check_strings(v: &serde_json::Value) -> Result<(), ApiError> {
    fn walk(v: &serde_json::Value, path: &str, field: &str) -> Result<(), ApiError> {
        match v {
            serde_json::Value::String(s) => match control_problem(s, MULTILINE_FIELDS.contains(&field)) {
                None => Ok(()),
                Some(why) => {
                    let at = if path.is_empty() { None } else { Some(path.to_owned()) };
                    Err(ApiError::Invalid {
                        code: "invalid_value",
                        message: match &at {
                            Some(p) => format!("{p}: {why}"),
                            None => format!("the body {why}"),
                        },
                        field: at,
                    })
                }
            },
            serde_json::Value::Array(items) => items
                .iter()
                .enumerate()
                .try_for_each(|(i, item)| walk(item, &format!("{path}[{i}]"), field)),
            serde_json::Value::Object(map) => map.iter().try_for_each(|(k, item)| {
                let child = join_path(path, k);
                if let Some(why) = control_problem(k, false) {
                    return Err(ApiError::Invalid {
                        code: "invalid_value",
                        message: format!("a field name {why}"),
                        field: Some(path.to_owned()).filter(|p| !p.is_empty()),
                    });
                }
                walk(item, &child, k)
            }),
            _ => Ok(()),
        }
    }
    walk(v, "", "")
}

/// Parses a JSON document into `T`, classifying errors as [`ApiJson`] documents.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Syntax first, so `{} trailing` is malformed rather than "missing field"; then the strings.
    let doc: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::MalformedJson(format!("the body is not valid JSON: {e}")))?;
    check_strings(&doc)?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
    de.end()
        .map_err(|e| ApiError::MalformedJson(format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

fn unsupported() -> ApiError {
    ApiError::UnsupportedMediaType("expected a JSON body with Content-Type: application/json".into())
}

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !is_json(&req) {
            return Err(unsupported());
        }
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = is_json(&req);
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        if !json {
            return Err(unsupported());
        }
        parse_json(&bytes).map(OptionalJson)
    }
}

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<T>::from_request_parts(parts, state).await {
            Ok(Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(ApiError::NotFound(format!("no such resource: {}", e.body_text()))),
        }
    }
}

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(de).map(ApiQuery).map_err(|e| {
            let path = e.path().to_string();
            let msg = e.inner().to_string();
            let (code, field) = if let Some(name) = msg.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
                ("missing_field", name.to_owned())
            } else if let Some(name) = msg.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
                ("unknown_field", name.to_owned())
            } else {
                ("invalid_value", path)
            };
            ApiError::Invalid {
                code,
                message: format!("query parameter {field}: {msg}"),
                field: Some(field),
            }
        })
    }
}

/// Serde helpers for RFC 3339 instants: an offset (`Z` or `±HH:MM`) is required.
pub mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer};

    /// Parses an RFC 3339 time with offset. In a query string a `+` arrives as a space, so a
    /// space before a trailing `HH:MM` offset is read as `+`.
    pub fn parse(s: &str) -> Result<DateTime<Utc>, String> {
        let s = s.trim();
        let fixed;
        let s = if s.len() > 6 && s.as_bytes()[s.len() - 6] == b' ' && s.as_bytes()[s.len() - 3] == b':' {
            fixed = format!("{}+{}", &s[..s.len() - 6], &s[s.len() - 5..]);
            fixed.as_str()
        } else {
            s
        };
        DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc)).map_err(|_| {
            format!("expected an RFC 3339 time with offset such as 2026-03-01T09:00:00Z or 2026-03-01T09:00:00+01:00, got {s:?}")
        })
    }

    /// Deserialises a required instant.
    pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    /// Deserialises an optional instant.
    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => parse(&s).map(Some).map_err(serde::de::Error::custom),
        }
    }
}

/// Serde helpers for wall-clock times written `HH:MM` (seconds allowed in, written out only when
/// not zero).
pub mod hhmm {
    use chrono::{NaiveTime, Timelike};
    use serde::{Deserialize, Deserializer, Serializer};

    /// Parses `HH:MM` or `HH:MM:SS`.
    pub fn parse(s: &str) -> Result<NaiveTime, String> {
        NaiveTime::parse_from_str(s, "%H:%M")
            .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M:%S"))
            .map_err(|_| format!("expected a time of day as HH:MM such as 07:30, got {s:?}"))
    }

    /// Formats as `HH:MM` (or `HH:MM:SS` when the seconds are not zero).
    pub fn format(t: &NaiveTime) -> String {
        if t.second() == 0 {
            t.format("%H:%M").to_string()
        } else {
            t.format("%H:%M:%S").to_string()
        }
    }

    /// Deserialises a time of day.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveTime, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    /// Serialises a time of day.
    pub fn serialize<S: Serializer>(t: &NaiveTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        n: i64,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        inner: Option<Inner>,
        #[serde(default, deserialize_with = "rfc3339::optional")]
        at: Option<chrono::DateTime<chrono::Utc>>,
    }

    fn field_of(body: &str) -> (String, Option<String>) {
        let e = parse_json::<Outer>(body.as_bytes()).unwrap_err();
        let b = e.body();
        (b.error, b.field)
    }

    #[test]
    fn json_errors_name_the_field() {
        assert_eq!(field_of("{"), ("malformed_json".into(), None));
        assert_eq!(field_of("{} x"), ("malformed_json".into(), None));
        assert_eq!(field_of("{}"), ("missing_field".into(), Some("name".into())));
        assert_eq!(field_of(r#"{"name": 3}"#), ("invalid_type".into(), Some("name".into())));
        assert_eq!(
            field_of(r#"{"name": "a", "inner": {}}"#),
            ("missing_field".into(), Some("inner.n".into()))
        );
        assert_eq!(
            field_of(r#"{"name": "a", "inner": {"n": "x"}}"#),
            ("invalid_type".into(), Some("inner.n".into()))
        );
        assert_eq!(
            field_of(r#"{"name": "a", "at": "2026-01-01T10:00:00"}"#),
            ("invalid_value".into(), Some("at".into()))
        );
        assert_eq!(field_of(r#"{"name": "a", "nmae": 1}"#).0, "unknown_field");
        assert!(parse_json::<Outer>(br#"{"name": "a", "at": "2026-01-01T10:00:00+01:00"}"#).is_ok());
    }

    #[test]
    fn control_characters_are_refused_naming_the_field() {
        // The body that was a 500: a NUL (and a C1 control) in a contact's name.
        let e = parse_json::<serde_json::Value>(br#"{"name": "\udaaf\uddd9\u00ae\u009e\u0000", "source": "website"}"#).unwrap_err();
        let b = e.body();
        assert_eq!(
            (b.error.as_str(), b.field.as_deref()),
            ("invalid_value", Some("name")),
            "{}",
            b.message
        );
        assert_eq!(field_of(r#"{"name": "a\r\nb"}"#), ("invalid_value".into(), Some("name".into())));
        assert_eq!(field_of(r#"{"name": "a\tb"}"#), ("invalid_value".into(), Some("name".into())));
        // Free text may hold line breaks and tabs, never NUL.
        assert!(parse_json::<serde_json::Value>(br#"{"skills": [{"notes": "line 1\nline 2\tend"}]}"#).is_ok());
        let e = parse_json::<serde_json::Value>(br#"{"skills": [{"notes": "a\u0000"}]}"#).unwrap_err();
        assert_eq!(e.body().field.as_deref(), Some("skills[0].notes"));
        let e = parse_json::<serde_json::Value>(br#"{"content": "a\u0007"}"#).unwrap_err();
        assert_eq!(e.body().field.as_deref(), Some("content"));
        assert!(parse_json::<serde_json::Value>(br#"{"a\u0000": 1}"#).is_err());
        assert!(parse_json::<serde_json::Value>(br#""\u0000""#).is_err());
        // Other odd Unicode is fine.
        assert!(parse_json::<serde_json::Value>("{\"name\": \"\u{202e}\u{feff}😀 Zoë\"}".as_bytes()).is_ok());
    }

    #[test]
    fn rfc3339_needs_an_offset_and_hhmm_a_valid_clock_time() {
        assert!(rfc3339::parse("2026-01-01T10:00:00 01:00").is_ok());
        assert!(rfc3339::parse("2026-01-01T10:00:00").is_err());
        assert_eq!(hhmm::format(&hhmm::parse("07:30").unwrap()), "07:30");
        assert!(hhmm::parse("25:00").is_err());
    }
}
