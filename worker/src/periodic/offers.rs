//! The expiry net of slot offers: open offers whose expiry (slot start minus
//! `GAP_FILL_MIN_NOTICE`) has passed are marked `expired`. Runs with every reminder sweep. The
//! state is also computed whenever an offer is read or accepted, so nothing depends on this
//! running on time; it keeps `slot_offers.status` honest for operators and the rollup. The
//! offers themselves belong to `dashlight_core::gaps`.

use chrono::{DateTime, Utc};

use super::{Context, PeriodicError};

/// Marks expired offers; returns how many.
pub async fn expire(ctx: &Context, now: DateTime<Utc>) -> Result<u64, PeriodicError> {
    let mut conn = ctx.pool.acquire().await?;
    let n = dashlight_core::gaps::expire_due(&mut conn, now).await?;
    if n > 0 {
        tracing::info!(expired = n, "slot offers expired");
    }
    Ok(n)
}
