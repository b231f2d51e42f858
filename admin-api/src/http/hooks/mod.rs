//! Routes providers and mail servers call (docs/hearing-back.md): no admin token; each
//! hook authenticates its caller itself (a provider's signature, or the inbound mail's own
//! bearer token) and refuses with 403, changing nothing, when that fails.
//!
//! - [`sms`]: Twilio's status callbacks and inbound SMS (`X-Twilio-Signature`).
//! - [`email`]: `/hooks/email/inbound`, mail that comes back (bounces, auto-replies, the
//!   unsubscribe `mailto:`), behind its own bearer token (`INBOUND_EMAIL_TOKEN`).

pub mod email;
pub mod sms;

use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

/// Every hook route.
pub(crate) fn open_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().merge(sms::routes()).merge(email::routes())
}
