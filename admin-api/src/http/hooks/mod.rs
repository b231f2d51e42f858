//! Routes providers call (PRODUCT.md, "Hearing back"): no bearer token; each hook authenticates
//! its caller itself and refuses with 403, changing nothing, when that fails.
//!
//! - [`sms`]: Twilio's status callbacks and inbound SMS (`X-Twilio-Signature`).

pub mod sms;

use utoipa_axum::router::OpenApiRouter;

use crate::AppState;

/// Every hook route.
pub(crate) fn open_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().merge(sms::routes())
}
