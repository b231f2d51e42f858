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
    sqlx::query(r#"INSERT INTO analytics_events (user_id, event_type, event_data, "timestamp") VALUES ($1, $2, $3, $4)"#)
        .bind(user_id)
        .bind(event_type)
        .bind(data)
        .bind(at)
        .execute(conn)
        .await?;
    Ok(())
}
