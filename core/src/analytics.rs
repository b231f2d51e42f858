//! `analytics_events`: the system's own record of what happened (booking created, payment
//! succeeded, notification sent, ...), written in the same transaction as the fact it records.

use serde_json::Value;
use sqlx::PgConnection;

/// Records an analytics event.
pub async fn record(
    conn: &mut PgConnection,
    user_id: Option<i64>,
    event_type: &str,
    data: Value,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"INSERT INTO analytics_events (user_id, event_type, event_data, "timestamp") VALUES ($1, $2, $3, $4)"#,
        user_id,
        event_type,
        data,
        at,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// One event of [`record_many`].
#[derive(Debug, Clone)]
pub struct Event {
    /// Who it is about.
    pub user_id: Option<i64>,
    /// What happened.
    pub event_type: &'static str,
    /// Details.
    pub data: Value,
    /// When.
    pub at: chrono::DateTime<chrono::Utc>,
}

/// Records many events in one statement.
pub async fn record_many(conn: &mut PgConnection, events: &[Event]) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let users: Vec<Option<i64>> = events.iter().map(|e| e.user_id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type).collect();
    let data: Vec<&Value> = events.iter().map(|e| &e.data).collect();
    let at: Vec<chrono::DateTime<chrono::Utc>> = events.iter().map(|e| e.at).collect();
    sqlx::query!(
        r#"INSERT INTO analytics_events (user_id, event_type, event_data, "timestamp")
           SELECT * FROM unnest($1::bigint[], $2::text[], $3::jsonb[], $4::timestamptz[])"#,
        &users as &[Option<i64>],
        &types as &[&str],
        &data as &[&Value],
        &at,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Erasure: the person's events keep their (pseudonymous) user id and type; any identifying
/// string in their data, or in another event's data about them, becomes the pseudonym.
pub async fn erase_person(conn: &mut PgConnection, e: &crate::privacy::Erasing) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE analytics_events SET event_data = erase_needles_jsonb(event_data, $2, $3)
         WHERE (user_id = $1 OR EXISTS (SELECT 1 FROM unnest($4::text[]) AS s WHERE strpos(lower(event_data::text), lower(s)) > 0))
           AND event_data <> erase_needles_jsonb(event_data, $2, $3)",
        e.user_id,
        &e.needles,
        e.pseudonym,
        &e.strong,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected())
}
