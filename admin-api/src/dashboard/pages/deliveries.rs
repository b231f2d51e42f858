//! The Deliveries page (`GET /deliveries`): failed and dead first, filtered by status, channel
//! and kind, with Retry buttons, "Retry all shown" and the newest suppressions.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Query, State},
    http::StatusCode,
    response::Response,
};
use dashlight_core::kinds::Kind;
use serde::{Deserialize, Serialize};

use super::{
    super::{
        Layout, Operator, error_page, render,
        view::{self, Explained, Time},
    },
    CHANNELS, nonempty,
};
use crate::{
    AppState,
    error::ApiError,
    extract::ApiQuery,
    http::deliveries::{DELIVERY_STATUSES, DeliveryOut, DeliveryQuery, RETRYABLE, list_deliveries},
};

/// Most deliveries one page shows.
pub const DELIVERIES_SHOWN: i64 = 200;

/// The Deliveries page's filter (a GET form); empty means any.
#[derive(Debug, Default, Clone, Deserialize)]
pub struct DeliveryFilter {
    /// A delivery status.
    pub status: Option<String>,
    /// `email`, `sms` or `push`.
    pub channel: Option<String>,
    /// A notification kind.
    pub kind: Option<String>,
}

impl DeliveryFilter {
    fn normalized(&self) -> DeliveryFilter {
        DeliveryFilter {
            status: nonempty(&self.status),
            channel: nonempty(&self.channel),
            kind: nonempty(&self.kind),
        }
    }
}

#[derive(Serialize)]
struct Choice {
    value: String,
    selected: bool,
}

fn choices<'a>(all: impl IntoIterator<Item = &'a str>, current: Option<&str>) -> Vec<Choice> {
    all.into_iter()
        .map(|v| Choice {
            value: v.to_owned(),
            selected: current == Some(v),
        })
        .collect()
}

#[derive(Serialize)]
struct DeliveryRow {
    id: i64,
    status: String,
    status_class: &'static str,
    kind: String,
    title: Option<String>,
    booking_id: Option<i64>,
    recipient: Option<String>,
    target: String,
    channel: String,
    attempts: i32,
    max_attempts: i32,
    explained: Option<Explained>,
    updated: Time,
    retryable: bool,
}

/// "Retry all shown (N)": the filter, and the ids of exactly the N retryable rows shown, which
/// are all the button retries (deliveries that failed after the page was drawn, or beyond the
/// rows shown, are not touched).
#[derive(Serialize)]
struct BulkRetry {
    status: String,
    channel: String,
    kind: String,
    count: usize,
    /// Comma-separated delivery ids.
    ids: String,
}

#[derive(Serialize)]
struct DeliveriesPage {
    statuses: Vec<Choice>,
    channels: Vec<Choice>,
    kinds: Vec<Choice>,
    filtered: bool,
    by_status: bool,
    rows: Vec<DeliveryRow>,
    limit: i64,
    truncated: bool,
    retry_all: Option<BulkRetry>,
    error: Option<String>,
    /// The newest suppressed addresses and numbers (sends to them are skipped).
    suppressions: Vec<SuppressionRow>,
}

/// A suppressed address or number, beside the failed deliveries.
#[derive(Serialize)]
struct SuppressionRow {
    id: i64,
    channel: String,
    target: String,
    reason: String,
    detail: Option<String>,
    created: view::Time,
}

/// Suppressions shown on the Deliveries page.
const SUPPRESSIONS_SHOWN: i64 = 20;

/// Names and titles for people: per notification id, `(title, booking, recipient)`.
async fn notification_labels(state: &AppState, ids: &[i64]) -> Result<HashMap<i64, (String, Option<i64>, Option<String>)>, ApiError> {
    let rows = sqlx::query!(
        r#"SELECT n.id AS "id!", n.title AS "title!", n.booking_id,
                COALESCE(NULLIF(trim(concat_ws(' ', u.first_name, u.last_name)), ''), n.recipient_email) AS "recipient?"
         FROM notifications n LEFT JOIN users u ON u.id = n.user_id
         WHERE n.id = ANY($1)"#,
        ids,
    )
    .fetch_all(&state.pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, (r.title, r.booking_id, r.recipient))).collect())
}

/// One call of the JSON API's `GET /api/deliveries`.
async fn api_deliveries(state: &AppState, status: Option<String>, f: &DeliveryFilter, limit: i64) -> Result<Vec<DeliveryOut>, ApiError> {
    let q = DeliveryQuery {
        status,
        channel: f.channel.clone(),
        user_id: None,
        kind: f.kind.clone(),
        since: None,
        limit: Some(limit),
        cursor: None,
    };
    let Json(page) = list_deliveries(State(state.clone()), ApiQuery(q)).await?;
    Ok(page.items)
}

/// The deliveries to show, failed and dead first (newest first within each part).
async fn deliveries_shown(state: &AppState, f: &DeliveryFilter) -> Result<(Vec<DeliveryOut>, bool), ApiError> {
    let limit = DELIVERIES_SHOWN;
    if f.status.is_some() {
        let mut rows = api_deliveries(state, f.status.clone(), f, limit + 1).await?;
        let truncated = rows.len() as i64 > limit;
        rows.truncate(limit as usize);
        return Ok((rows, truncated));
    }
    let mut first = Vec::new();
    for status in RETRYABLE {
        first.extend(api_deliveries(state, Some(status.to_owned()), f, limit + 1).await?);
    }
    first.sort_by_key(|d| std::cmp::Reverse(d.id));
    let rest = api_deliveries(state, None, f, limit + 1).await?;
    let rest_count = rest.len();
    let mut truncated = first.len() as i64 > limit || rest_count as i64 > limit;
    first.extend(rest.into_iter().filter(|d| !RETRYABLE.contains(&d.status.as_str())));
    truncated |= first.len() as i64 > limit;
    first.truncate(limit as usize);
    Ok((first, truncated))
}

/// `GET /deliveries`: failed and dead first; filters by status, channel and kind; Retry buttons.
pub async fn deliveries(State(state): State<AppState>, _: Operator, Query(filter): Query<DeliveryFilter>) -> Response {
    let layout = Layout::new(&state, "Deliveries", "deliveries");
    let f = filter.normalized();
    let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
    let mut page = DeliveriesPage {
        statuses: choices(DELIVERY_STATUSES.iter().copied(), f.status.as_deref()),
        channels: choices(CHANNELS, f.channel.as_deref()),
        kinds: choices(kinds, f.kind.as_deref()),
        filtered: f.status.is_some() || f.channel.is_some() || f.kind.is_some(),
        by_status: f.status.is_some(),
        rows: Vec::new(),
        limit: DELIVERIES_SHOWN,
        truncated: false,
        retry_all: None,
        error: None,
        suppressions: Vec::new(),
    };
    let (rows, truncated) = match deliveries_shown(&state, &f).await {
        Ok(r) => r,
        Err(e @ ApiError::Invalid { .. }) => {
            // A filter the API refuses: say so next to the form.
            page.error = Some(e.body().message);
            return render(StatusCode::UNPROCESSABLE_ENTITY, "deliveries", &layout, &page);
        }
        Err(e) => return error_page(layout, e),
    };
    let ids: Vec<i64> = rows.iter().map(|d| d.notification_id).collect();
    let labels = match notification_labels(&state, &ids).await {
        Ok(l) => l,
        Err(e) => return error_page(layout, e),
    };
    let tz = state.config.school_timezone;
    page.truncated = truncated;
    page.rows = rows
        .iter()
        .map(|d| {
            let (title, booking_id, recipient) = labels.get(&d.notification_id).cloned().unwrap_or_default();
            let target = view::target(d);
            let recipient = recipient.filter(|r| *r != target);
            DeliveryRow {
                id: d.id,
                status: d.status.clone(),
                status_class: view::status_class(&d.status),
                kind: d.kind.clone(),
                title: Some(title).filter(|t| !t.is_empty()),
                booking_id,
                recipient,
                target,
                channel: d.channel.clone(),
                attempts: d.attempts,
                max_attempts: d.max_attempts,
                explained: view::explain(d, tz),
                updated: view::time(d.updated_at, tz),
                retryable: RETRYABLE.contains(&d.status.as_str()),
            }
        })
        .collect();
    let bulk_allowed = f.status.as_deref().is_none_or(|s| RETRYABLE.contains(&s));
    let shown: Vec<String> = page.rows.iter().filter(|r| r.retryable).map(|r| r.id.to_string()).collect();
    if bulk_allowed && !shown.is_empty() {
        page.retry_all = Some(BulkRetry {
            status: f.status.clone().unwrap_or_default(),
            channel: f.channel.clone().unwrap_or_default(),
            kind: f.kind.clone().unwrap_or_default(),
            count: shown.len(),
            ids: shown.join(","),
        });
    }
    let suppressed = match state.pool.acquire().await {
        Ok(mut conn) => dashlight_core::suppressions::page(&mut conn, None, None, None, SUPPRESSIONS_SHOWN).await,
        Err(e) => Err(e),
    };
    match suppressed {
        Ok(list) => {
            page.suppressions = list
                .into_iter()
                .map(|s| SuppressionRow {
                    id: s.id,
                    channel: s.channel.as_str().to_owned(),
                    target: s.target,
                    reason: s.reason.skip_reason().to_owned(),
                    detail: s.detail,
                    created: view::time(s.created_at, tz),
                })
                .collect();
        }
        Err(e) => return error_page(layout, e.into()),
    }
    render(StatusCode::OK, "deliveries", &layout, &page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_filters_mean_any() {
        let f = DeliveryFilter {
            status: Some(" ".into()),
            channel: Some("email".into()),
            kind: None,
        }
        .normalized();
        assert_eq!((f.status, f.channel.as_deref(), f.kind), (None, Some("email"), None));
    }
}
