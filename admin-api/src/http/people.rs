//! People: `POST /api/users`, `PUT`/`GET /api/users/{id}/preferences` (with the per-kind email
//! opt-outs, `email_opt_outs`), `POST /api/users/{id}/devices`
//! and `PUT /api/instructors/{id}/availability`. Values are checked here where the API owns the
//! format (Web Push keys, `HH:MM`), then written through `dashlight_core::people` in one
//! transaction per request.

use axum::{Json, extract::State, http::StatusCode};
use base64::Engine as _;
use chrono::{DateTime, NaiveTime, Utc};
use dashlight_core::{
    kinds::Kind,
    people::{self, NewDevice, NewInstructor, NewStudent, NewUser, OptOutSource, Preferences, Role, Window},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiJson, ApiPath, hhmm, rfc3339},
};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_user))
        .routes(routes!(put_preferences, get_preferences))
        .routes(routes!(add_device))
        .routes(routes!(put_availability))
}

/// A user's role.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RoleIn {
    /// A learner; gets a student profile.
    Student,
    /// A driving instructor; gets an instructor profile.
    Instructor,
}

/// The student profile of a new student (all optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StudentIn {
    /// Licence category, default `B`.
    #[schema(example = "B")]
    pub license_type: Option<String>,
    /// The usual instructor (`instructor_id`).
    pub current_instructor_id: Option<i64>,
    /// Booked driving tests (RFC 3339 with offset).
    #[serde(default, deserialize_with = "test_dates")]
    #[schema(value_type = Vec<String>, format = DateTime)]
    pub test_dates: Vec<DateTime<Utc>>,
}

fn test_dates<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<DateTime<Utc>>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter().map(|s| rfc3339::parse(s).map_err(serde::de::Error::custom)).collect()
}

/// The instructor profile of a new instructor.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InstructorIn {
    /// Instructor licence number (unique).
    #[schema(example = "ADI-482100")]
    pub license_number: String,
    /// Hourly rate in minor units (pence), default 0.
    pub hourly_rate_minor: Option<i64>,
    /// ISO 4217 currency, default `GBP`.
    pub currency: Option<String>,
    /// Free text.
    pub bio: Option<String>,
}

/// `POST /api/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// `student` or `instructor`.
    pub role: RoleIn,
    /// Email address, unique whatever its case.
    #[schema(example = "amelia@example.com")]
    pub email: String,
    /// E.164 phone number.
    #[schema(example = "+447700900123")]
    pub phone: Option<String>,
    /// Given name.
    pub first_name: String,
    /// Family name.
    pub last_name: String,
    /// IANA time zone; default the school's.
    #[schema(example = "Europe/London")]
    pub timezone: Option<String>,
    /// Student profile (role `student` only).
    pub student: Option<StudentIn>,
    /// Instructor profile (required for role `instructor`).
    pub instructor: Option<InstructorIn>,
}

/// A created user.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserCreated {
    /// `users.id`.
    pub id: i64,
    /// `student` or `instructor`.
    pub role: String,
    /// The student profile's id (role `student`): use it in bookings.
    pub student_id: Option<i64>,
    /// The instructor profile's id (role `instructor`): use it in bookings and availability.
    pub instructor_id: Option<i64>,
    /// Email address.
    pub email: String,
    /// IANA time zone.
    pub timezone: String,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// Creates a user with their student or instructor profile and default preferences.
#[utoipa::path(post, path = "/api/users", tag = "people", request_body = CreateUser,
    responses(
        (status = 201, description = "Created", body = UserCreated),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 409, description = "Email or licence number already taken", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid value (email, phone, timezone, role, profile)", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create_user(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<UserCreated>), ApiError> {
    let timezone = body
        .timezone
        .clone()
        .unwrap_or_else(|| state.config.school_timezone.name().to_owned());
    let role = match body.role {
        RoleIn::Student => Role::Student,
        RoleIn::Instructor => Role::Instructor,
    };
    let nu = NewUser {
        role,
        email: body.email.clone(),
        phone: body.phone.clone(),
        first_name: body.first_name,
        last_name: body.last_name,
        timezone: timezone.clone(),
        student: body.student.map(|s| NewStudent {
            license_type: s.license_type,
            current_instructor_id: s.current_instructor_id,
            test_dates: s.test_dates,
        }),
        instructor: body.instructor.map(|i| NewInstructor {
            license_number: i.license_number,
            hourly_rate_minor: i.hourly_rate_minor,
            currency: i.currency,
            bio: i.bio,
        }),
    };
    let mut tx = state.pool.begin().await?;
    let created = people::create_user(&mut tx, nu).await?;
    tx.commit().await?;
    Ok((
        StatusCode::CREATED,
        Json(UserCreated {
            id: created.id,
            role: created.role.as_str().to_owned(),
            student_id: created.student_id,
            instructor_id: created.instructor_id,
            email: body.email.trim().to_owned(),
            timezone,
            created_at: created.created_at,
        }),
    ))
}

/// Quiet hours in the user's time zone; may wrap midnight.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// Start, `HH:MM`.
    #[serde(with = "hhmm")]
    #[schema(value_type = String, example = "22:00")]
    pub start: NaiveTime,
    /// End, `HH:MM`.
    #[serde(with = "hhmm")]
    #[schema(value_type = String, example = "07:00")]
    pub end: NaiveTime,
}

/// `PUT /api/users/{id}/preferences`: the whole set.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreferencesIn {
    /// Email on or off.
    pub email_notifications: bool,
    /// SMS on or off.
    pub sms_notifications: bool,
    /// Push on or off.
    pub push_notifications: bool,
    /// Quiet hours, or `null` for none.
    #[serde(default)]
    pub quiet_hours: Option<QuietHours>,
    /// The kinds whose emails the user does not want (the whole set; omitted: unchanged). Kinds
    /// about their own bookings and money (`booking_confirmed`, `booking_cancelled`,
    /// `booking_rescheduled`, `invoice_issued`) cannot be turned off.
    #[serde(default)]
    #[schema(example = json!(["daily_agenda", "lesson_report"]))]
    pub email_opt_outs: Option<Vec<String>>,
}

/// A user's preferences.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PreferencesOut {
    /// `users.id`.
    pub user_id: i64,
    /// Email on or off.
    pub email_notifications: bool,
    /// SMS on or off.
    pub sms_notifications: bool,
    /// Push on or off.
    pub push_notifications: bool,
    /// Quiet hours, or `null`.
    pub quiet_hours: Option<QuietHours>,
    /// The kinds whose emails the user turned off (an unsubscribe link, their own page, this
    /// API), in kind order.
    #[serde(default)]
    #[schema(example = json!(["daily_agenda"]))]
    pub email_opt_outs: Vec<String>,
}

impl From<Preferences> for PreferencesOut {
    fn from(p: Preferences) -> Self {
        let quiet_hours = match (p.quiet_hours_start, p.quiet_hours_end) {
            (Some(start), Some(end)) => Some(QuietHours { start, end }),
            _ => None,
        };
        PreferencesOut {
            user_id: p.user_id,
            email_notifications: p.email_notifications,
            sms_notifications: p.sms_notifications,
            push_notifications: p.push_notifications,
            quiet_hours,
            email_opt_outs: Vec::new(),
        }
    }
}

/// The kinds of `email_opt_outs`, checked: each a known kind that may be turned off.
fn opt_out_kinds(names: &[String]) -> Result<Vec<Kind>, ApiError> {
    names
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let field = format!("email_opt_outs[{i}]");
            let kind = Kind::parse(name.trim()).ok_or_else(|| ApiError::invalid(&field, format!("{name:?} is not a notification kind")))?;
            if !kind.email_opt_out_allowed() {
                return Err(ApiError::invalid(field, format!("{} emails cannot be turned off", kind.as_str())));
            }
            Ok(kind)
        })
        .collect()
}

async fn with_opt_outs(conn: &mut sqlx::PgConnection, p: Preferences) -> Result<PreferencesOut, ApiError> {
    let kinds = people::email_opt_outs(conn, p.user_id).await?;
    let mut out = PreferencesOut::from(p);
    out.email_opt_outs = kinds.into_iter().map(|k| k.as_str().to_owned()).collect();
    Ok(out)
}

/// A user's notification preferences, with the kinds whose emails they turned off.
#[utoipa::path(get, path = "/api/users/{id}/preferences", tag = "people",
    params(("id" = i64, Path, description = "users.id")),
    responses(
        (status = 200, description = "The preferences", body = PreferencesOut),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn get_preferences(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<PreferencesOut>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    let prefs = people::preferences(&mut conn, id).await?;
    Ok(Json(with_opt_outs(&mut conn, prefs).await?))
}

/// Replaces a user's notification preferences.
#[utoipa::path(put, path = "/api/users/{id}/preferences", tag = "people", request_body = PreferencesIn,
    params(("id" = i64, Path, description = "users.id")),
    responses(
        (status = 200, description = "Saved", body = PreferencesOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid value", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn put_preferences(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<PreferencesIn>,
) -> Result<Json<PreferencesOut>, ApiError> {
    let prefs = Preferences {
        user_id: id,
        email_notifications: body.email_notifications,
        sms_notifications: body.sms_notifications,
        push_notifications: body.push_notifications,
        quiet_hours_start: body.quiet_hours.as_ref().map(|q| q.start),
        quiet_hours_end: body.quiet_hours.as_ref().map(|q| q.end),
    };
    let opt_outs = body.email_opt_outs.as_deref().map(opt_out_kinds).transpose()?;
    let mut tx = state.pool.begin().await?;
    let saved = people::set_preferences(&mut tx, &prefs).await?;
    if let Some(off) = &opt_outs {
        for kind in Kind::ALL.into_iter().filter(|k| k.email_opt_out_allowed()) {
            people::set_email_opt_out(&mut tx, id, kind, off.contains(&kind), OptOutSource::Api).await?;
        }
    }
    let out = with_opt_outs(&mut tx, saved).await?;
    tx.commit().await?;
    Ok(Json(out))
}

/// `POST /api/users/{id}/devices`: a Web Push subscription as the browser gives it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceIn {
    /// The client's own name for the device (unique per user; registering it again renews it).
    #[schema(example = "amelia-phone")]
    pub device_id: String,
    /// The push service URL (`subscription.endpoint`).
    #[schema(example = "https://fcm.googleapis.com/fcm/send/abc")]
    pub push_endpoint: String,
    /// base64url uncompressed P-256 public key (65 bytes; padding tolerated).
    pub p256dh: String,
    /// base64url 16-byte auth secret (padding tolerated).
    pub auth: String,
}

/// A registered device (keys are not echoed).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DeviceOut {
    /// `user_devices.id`.
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// The client's name for it.
    pub device_id: String,
    /// Push service URL.
    pub push_endpoint: String,
    /// False once the push service ended the subscription.
    pub active: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

impl From<people::Device> for DeviceOut {
    fn from(d: people::Device) -> Self {
        DeviceOut {
            id: d.id,
            user_id: d.user_id,
            device_id: d.device_id,
            push_endpoint: d.push_endpoint,
            active: d.active,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

fn decode_b64url(field: &str, value: &str) -> Result<Vec<u8>, ApiError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(value.trim().trim_end_matches('='))
        .map_err(|_| ApiError::invalid(field, "expected base64url (RFC 4648 §5)"))
}

/// Checks a subscription's keys: `p256dh` is an uncompressed point on P-256, `auth` 16 bytes.
/// Returns them as unpadded base64url.
pub fn check_push_keys(p256dh: &str, auth: &str) -> Result<(String, String), ApiError> {
    let point = decode_b64url("p256dh", p256dh)?;
    if point.len() != 65 || point[0] != 0x04 {
        return Err(ApiError::invalid(
            "p256dh",
            format!(
                "expected a 65-byte uncompressed P-256 public key starting 0x04, got {} bytes",
                point.len()
            ),
        ));
    }
    if p256::PublicKey::from_sec1_bytes(&point).is_err() {
        return Err(ApiError::invalid("p256dh", "not a point on the P-256 curve"));
    }
    let secret = decode_b64url("auth", auth)?;
    if secret.len() != 16 {
        return Err(ApiError::invalid(
            "auth",
            format!("expected a 16-byte auth secret, got {} bytes", secret.len()),
        ));
    }
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    Ok((enc.encode(point), enc.encode(secret)))
}

/// The SSRF guard at registration ([`dashlight_core::endpoints`]): https only, and no
/// loopback, private or link-local address, unless `PUSH_ALLOW_PRIVATE_ENDPOINTS` is on. The
/// worker checks again when it connects.
pub(crate) fn check_endpoint(endpoint: &str, allow_private: bool) -> Result<(), ApiError> {
    match dashlight_core::endpoints::check_push_endpoint(endpoint, allow_private) {
        None => Ok(()),
        Some(why) => Err(ApiError::invalid("push_endpoint", why)),
    }
}

/// Registers a Web Push subscription (201), or renews the user's device of the same
/// `device_id` (200).
#[utoipa::path(post, path = "/api/users/{id}/devices", tag = "people", request_body = DeviceIn,
    params(("id" = i64, Path, description = "users.id")),
    responses(
        (status = 201, description = "Registered", body = DeviceOut),
        (status = 200, description = "Renewed an existing device of that device_id", body = DeviceOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid endpoint or keys", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn add_device(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<DeviceIn>,
) -> Result<(StatusCode, Json<DeviceOut>), ApiError> {
    check_endpoint(&body.push_endpoint, state.config.push_allow_private_endpoints)?;
    let (p256dh, auth) = check_push_keys(&body.p256dh, &body.auth)?;
    let nd = NewDevice {
        device_id: body.device_id,
        push_endpoint: body.push_endpoint,
        p256dh,
        auth,
    };
    let mut tx = state.pool.begin().await?;
    let (d, created) = people::register_device(&mut tx, id, &nd).await?;
    tx.commit().await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(DeviceOut::from(d))))
}

/// A weekly window in the instructor's time zone.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowIo {
    /// ISO weekday: 1 = Monday … 7 = Sunday.
    #[schema(minimum = 1, maximum = 7, example = 1)]
    pub day_of_week: i16,
    /// Start, `HH:MM`.
    #[serde(with = "hhmm")]
    #[schema(value_type = String, example = "08:00")]
    pub start_time: NaiveTime,
    /// End, `HH:MM`, after the start.
    #[serde(with = "hhmm")]
    #[schema(value_type = String, example = "18:00")]
    pub end_time: NaiveTime,
}

/// An instructor's weekly availability.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct AvailabilityOut {
    /// `instructors.id`.
    pub instructor_id: i64,
    /// The windows, by day and start.
    pub windows: Vec<WindowIo>,
}

/// Replaces an instructor's weekly windows (an empty list: available any time).
#[utoipa::path(put, path = "/api/instructors/{id}/availability", tag = "people", request_body = Vec<WindowIo>,
    params(("id" = i64, Path, description = "instructors.id")),
    responses(
        (status = 200, description = "Saved", body = AvailabilityOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such instructor", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid window (day, times, overlap)", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn put_availability(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<Vec<WindowIo>>,
) -> Result<Json<AvailabilityOut>, ApiError> {
    let windows: Vec<Window> = body
        .iter()
        .map(|w| Window {
            day_of_week: w.day_of_week,
            start_time: w.start_time,
            end_time: w.end_time,
        })
        .collect();
    let mut tx = state.pool.begin().await?;
    let saved = people::set_availability(&mut tx, id, &windows).await?;
    tx.commit().await?;
    Ok(Json(AvailabilityOut {
        instructor_id: id,
        windows: saved
            .into_iter()
            .map(|w| WindowIo {
                day_of_week: w.day_of_week,
                start_time: w.start_time,
                end_time: w.end_time,
            })
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_keys_and_endpoints_are_checked() {
        // From the web-push crate's docs (also the demo data).
        let p = "BLMbF9ffKBiWQLCKvTHb6LO8Nb6dcUh6TItC455vu2kElga6PQvUmaFyCdykxY2nOSSL3yKgfbmFLRTUaGv4yV8";
        let a = "xS03Fi5ErfTNH_l9WHE9Ig";
        assert!(check_push_keys(p, a).is_ok());
        assert!(check_push_keys(&format!("{p}="), &format!("{a}==")).is_ok());
        let mut off_curve = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(p).unwrap();
        off_curve[64] ^= 1;
        let off_curve = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(off_curve);
        assert_eq!(check_push_keys(&off_curve, a).unwrap_err().body().field.as_deref(), Some("p256dh"));
        assert_eq!(check_push_keys(p, "AAAA").unwrap_err().body().field.as_deref(), Some("auth"));
        assert!(check_endpoint("ftp://x", false).is_err());
        assert!(check_endpoint("https://push.example/abc", false).is_ok());
    }
}
