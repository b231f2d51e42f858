//! Alerts on a person's devices: registering this browser's push subscription, removing a
//! device, the VAPID public key and the service worker.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use base64::Engine as _;
use dashlight_core::{
    access,
    people::{self, NewDevice},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::{
    SW_CONTENT_TYPE,
    link::{same_origin, writer},
    message, page_error,
};
use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiJson, ApiPath},
    http::people::{DeviceOut, check_endpoint, check_push_keys},
    page::asset,
};

/// Switches one of the person's devices off (no more alerts to it); `303` back to the page.
#[utoipa::path(post, path = "/me/{token}/devices/{id}/remove", tag = "own page",
    params(("token" = String, Path, description = "the person's access token"), ("id" = i64, Path, description = "user_devices.id")),
    responses(
        (status = 303, description = "Removed: back to the page"),
        (status = 403, description = "Sent from another site (a page for browsers asking for text/html)", body = ErrorBody),
        (status = 404, description = "No page at this address, or not one of this person's devices (a page for browsers asking for text/html)", body = ErrorBody),
    ))]
pub async fn remove_device(State(state): State<AppState>, headers: HeaderMap, ApiPath((token, id)): ApiPath<(String, i64)>) -> Response {
    let o = match writer(&state, &headers, &token).await {
        Ok(o) => o,
        Err(r) => return r,
    };
    let done = async {
        let mut conn = state.pool.acquire().await?;
        people::remove_device(&mut conn, o.user_id, id).await?;
        Ok::<_, ApiError>(())
    }
    .await;
    match done {
        Ok(()) => {
            tracing::info!(user_id = o.user_id, device = id, "device removed by its owner");
            Redirect::to(&format!("/me/{token}?done=removed#devices")).into_response()
        }
        Err(ApiError::NotFound(_)) => message(
            &state,
            StatusCode::NOT_FOUND,
            "Device not found",
            "There is no such device on your page.",
        ),
        Err(e) => page_error(&state, e),
    }
}

/// `PushSubscription.toJSON()`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct SubscriptionIn {
    /// The push service URL.
    pub endpoint: String,
    /// When the subscription ends, if the browser knows (ignored).
    #[serde(default, rename = "expirationTime")]
    pub expiration_time: Option<f64>,
    /// The subscription's keys.
    pub keys: SubscriptionKeys,
}

/// The keys of a subscription (base64url).
#[derive(Debug, Deserialize, ToSchema)]
pub struct SubscriptionKeys {
    /// Uncompressed P-256 public key.
    pub p256dh: String,
    /// 16-byte auth secret.
    pub auth: String,
}

/// Registers this browser's push subscription for the person, with the endpoint (SSRF, at most
/// 1024 bytes) and key checks of `POST /api/users/{id}/devices`. The device's name is
/// `browser-` and a hash of the endpoint, so posting the same subscription again renews it
/// (200). A person keeps at most 10 active devices (the oldest is switched off), and may
/// register 20 at once, then one a minute (429).
#[utoipa::path(post, path = "/me/{token}/devices", tag = "own page", request_body = SubscriptionIn,
    params(("token" = String, Path, description = "the person's access token")),
    responses(
        (status = 201, description = "Registered", body = DeviceOut),
        (status = 200, description = "The same subscription again: renewed", body = DeviceOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 403, description = "Sent from another site", body = ErrorBody),
        (status = 404, description = "No page at this address", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid endpoint (over 1024 bytes, not https, not public) or keys", body = ErrorBody),
        (status = 429, description = "Too many registrations from this page (a burst of 20, then one a minute)", body = ErrorBody),
    ))]
pub async fn add_device(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiPath(token): ApiPath<String>,
    ApiJson(body): ApiJson<SubscriptionIn>,
) -> Result<(StatusCode, Json<DeviceOut>), ApiError> {
    let mut conn = state.pool.acquire().await?;
    let o = access::owner(&mut conn, &token)
        .await?
        .ok_or_else(|| ApiError::NotFound("no page at this address".into()))?;
    drop(conn);
    if !same_origin(&headers, &state.config.public_base_url) {
        tracing::warn!(user_id = o.user_id, "own page: a device from another site refused");
        return Err(forbidden());
    }
    if let Err(wait) = state.device_registrations.check(o.user_id) {
        tracing::warn!(user_id = o.user_id, "own page: too many device registrations");
        return Err(ApiError::SlowDown(
            "too many devices registered from this page".into(),
            crate::guard::retry_after_secs(wait),
        ));
    }
    check_endpoint(&body.endpoint, state.config.push_allow_private_endpoints).map_err(|e| rename_field(e, "endpoint"))?;
    let (p256dh, auth) = check_push_keys(&body.keys.p256dh, &body.keys.auth).map_err(|e| match e {
        ApiError::Invalid { code, field, message } => ApiError::Invalid {
            code,
            field: field.map(|f| format!("keys.{f}")),
            message,
        },
        other => other,
    })?;
    let hash = Sha256::digest(body.endpoint.as_bytes());
    let device_id = format!(
        "{}{}",
        access::PAGE_DEVICE_PREFIX,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(hash)[..16]
    );
    let nd = NewDevice {
        device_id,
        push_endpoint: body.endpoint,
        p256dh,
        auth,
    };
    let mut tx = state.pool.begin().await?;
    let (d, created) = people::register_device(&mut tx, o.user_id, &nd).await?;
    tx.commit().await?;
    tracing::info!(
        user_id = o.user_id,
        device = d.id,
        created,
        "push subscription registered from the own page"
    );
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(DeviceOut::from(d))))
}

fn rename_field(e: ApiError, to: &str) -> ApiError {
    match e {
        ApiError::Invalid { code, message, .. } => ApiError::Invalid {
            code,
            field: Some(to.to_owned()),
            message,
        },
        other => other,
    }
}

/// 403 with the JSON error body (the API's error enum has no 403: only these routes refuse a
/// request for where it came from).
fn forbidden() -> ApiError {
    ApiError::Forbidden("this request did not come from this site's own page".into())
}

/// The VAPID public key.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct VapidKey {
    /// base64url (no padding) uncompressed P-256 public key: `applicationServerKey`.
    pub key: String,
}

/// The public key of `VAPID_PRIVATE_KEY`, as `pushManager.subscribe` wants it.
pub fn public_key(private_b64url: &str) -> Option<String> {
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let raw = enc.decode(private_b64url.trim().trim_end_matches('=')).ok()?;
    let secret = p256::SecretKey::from_slice(&raw).ok()?;
    use p256::elliptic_curve::sec1::ToEncodedPoint as _;
    Some(enc.encode(secret.public_key().to_encoded_point(false).as_bytes()))
}

/// The key browsers subscribe with (`applicationServerKey`); 404 when push is not configured.
#[utoipa::path(get, path = "/push/vapid-public-key", tag = "own page",
    responses(
        (status = 200, description = "The key", body = VapidKey),
        (status = 404, description = "Push is not configured (no VAPID_PRIVATE_KEY)", body = ErrorBody),
    ))]
pub async fn vapid_public_key(State(state): State<AppState>) -> Result<Json<VapidKey>, ApiError> {
    state
        .config
        .push
        .as_ref()
        .and_then(|p| public_key(&p.vapid_private_key))
        .map(|key| Json(VapidKey { key }))
        .ok_or_else(|| ApiError::NotFound("push is not configured on this server (VAPID_PRIVATE_KEY)".into()))
}

/// The service worker, for the root scope: shows each push (`title`, `body`, `tag`, `url`) and
/// opens its `url` (on this site) when the notification is clicked.
#[utoipa::path(get, path = "/sw.js", tag = "own page",
    responses((status = 200, description = "The script", content_type = "application/javascript", body = String)))]
pub async fn service_worker() -> Response {
    let mut res = asset(SW_CONTENT_TYPE, include_str!("sw.js"));
    res.headers_mut().insert(
        header::HeaderName::from_static("service-worker-allowed"),
        HeaderValue::from_static("/"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vapid_public_key_is_65_bytes() {
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let key = public_key(&enc.encode([7u8; 32])).unwrap();
        let raw = enc.decode(key).unwrap();
        assert_eq!((raw.len(), raw[0]), (65, 4));
        assert_eq!(public_key("nope"), None);
    }
}
