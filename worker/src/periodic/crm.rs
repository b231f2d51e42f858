//! CRM follow-ups: a lead (`lead_status = 'lead'`) whose last interaction — or, without any,
//! its creation — is 7 days old or more gets one `crm_follow_up` email to the school (the
//! address in `MAIL_FROM`). The key `crm_follow_up:<contact>:<date of that interaction>` makes
//! it once per silence: a new interaction re-arms it.
//!
//! The scan reads `crm_contacts_follow_up_idx`; the newest `crm_interactions` row of each
//! candidate is checked too, in case `last_interaction_at` lags behind. Owns no table.

use chrono::{DateTime, Duration, Utc};
use dashlight_core::{
    kinds::Kind,
    notify::{self, NewNotification},
};
use serde_json::json;

use super::{Context, PeriodicError, existing_keys};

/// How long a lead may go without contact.
pub const QUIET_DAYS: i64 = 7;

/// The candidate scan: leads silent since `$1` or earlier. `pub` so tests can EXPLAIN it; [`run`]
/// runs the same file through `query_file_as!`.
pub const SCAN_SQL: &str = include_str!("../../queries/crm_scan.sql");

#[derive(Debug)]
struct Lead {
    id: i64,
    name: String,
    email: Option<String>,
    phone: Option<String>,
    created_at: DateTime<Utc>,
    last_interaction_at: Option<DateTime<Utc>>,
}

/// The dedupe key of a follow-up for the silence that started at `since`.
pub fn dedupe_key(contact_id: i64, since: DateTime<Utc>, tz: chrono_tz::Tz) -> String {
    format!("crm_follow_up:{contact_id}:{}", since.with_timezone(&tz).date_naive())
}

/// Creates the follow-ups that are due; returns the summary line.
pub async fn run(ctx: &Context, now: DateTime<Utc>) -> Result<String, PeriodicError> {
    let tz = ctx.config.school_timezone;
    let cutoff = now - Duration::days(QUIET_DAYS);
    let leads: Vec<Lead> = sqlx::query_file_as!(Lead, "queries/crm_scan.sql", cutoff)
        .fetch_all(&ctx.pool)
        .await?;
    let keys: Vec<String> = leads
        .iter()
        .map(|l| dedupe_key(l.id, l.last_interaction_at.unwrap_or(l.created_at), tz))
        .collect();
    let mut conn = ctx.pool.acquire().await?;
    let done = existing_keys(&mut conn, &keys).await?;
    drop(conn);
    let school = ctx.school_email();
    let mut created = 0usize;
    for (lead, key) in leads.iter().zip(keys) {
        if done.contains(&key) {
            continue;
        }
        let since = lead.last_interaction_at.unwrap_or(lead.created_at);
        let days = (now - since).num_days();
        let mut n = NewNotification::to_user(Kind::CrmFollowUp, 0, key, now);
        n.user_id = None;
        n.recipient_email = Some(school.clone());
        n.title = format!("Follow up with {}", lead.name);
        n.content = format!("{} has had no contact for {days} days.", lead.name);
        n.data = json!({
            "contact": {
                "name": lead.name,
                "email": lead.email,
                "phone": lead.phone,
                "last_interaction_at": lead.last_interaction_at.map(|t| t.to_rfc3339()),
                "days_since": days,
            }
        });
        let mut tx = ctx.pool.begin().await?;
        if notify::create(&mut tx, n).await?.is_some() {
            created += 1;
            tracing::info!(contact = lead.id, days_since = days, to = %school, "crm follow-up created");
        }
        tx.commit().await?;
    }
    Ok(format!("{} silent leads: {created} follow-ups created", leads.len()))
}
