//! The OpenAPI document (`GET /api/openapi.json`): built once from the same route definitions as
//! the router, with the bearer security scheme.

use std::sync::LazyLock;

use axum::Json;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{AppState, error::ErrorBody};

/// The document's base: title, tags, security scheme, shared schemas.
#[derive(OpenApi)]
#[openapi(
    info(title = "Dashlight admin API", description = "Operators' API of Dashlight, the notification engine of a driving school. Every /api route needs `Authorization: Bearer <ADMIN_API_TOKEN>`. Errors are `{\"error\", \"message\", \"field\"?}`."),
    modifiers(&BearerScheme),
    components(schemas(ErrorBody)),
    tags(
        (name = "people", description = "Users, preferences, devices, availability"),
        (name = "bookings", description = "Bookings, timelines and weekly series"),
        (name = "queues", description = "Job queues (apalis)"),
        (name = "deliveries", description = "Notifications, deliveries and retries"),
        (name = "lessons", description = "Completed lessons, skill ratings and progress, no-shows"),
        (name = "payments", description = "Payments, lesson packages and purchases"),
        (name = "messages", description = "Messages between staff, instructors and students"),
        (name = "crm", description = "Leads and staff interactions"),
        (name = "calendar", description = "iCalendar feeds of lessons (the feed needs no token)"),
        (name = "gaps", description = "The waitlist and freed slots offered to waiting students (the offer link needs no token)"),
        (name = "unsubscribe", description = "The List-Unsubscribe link of emails (no token: the signed address is the secret)"),
        (name = "own page", description = "A person's own page /me/{token} (the link is the secret: no admin token), its personal link, push subscription, VAPID key and service worker"),
        (name = "suppressions", description = "Addresses and numbers nothing is sent to (bounces, STOP), listed and lifted by operators"),
        (name = "analytics", description = "What the reminders achieve: confirmations and no-shows per day and first reminder channel"),
        (name = "hooks", description = "Routes providers and mail servers call: SMS status callbacks, inbound SMS, bounces (no admin bearer token: each verifies its caller, 403 otherwise)"),
        (name = "operations", description = "Health, readiness, metrics, this document"),
    )
)]
struct ApiDoc;

struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("ADMIN_API_TOKEN"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "inbound_email_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("INBOUND_EMAIL_TOKEN (the inbound email hook only)"))
                    .build(),
            ),
        );
    }
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(|| {
    let mut doc = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .merge(crate::api_routes())
        .merge(crate::open_routes())
        .into_openapi();
    too_many_failures(&mut doc);
    doc
});

/// Every `/api` operation may answer 429 (too many failed authentications from the client's
/// address, see [`crate::guard`]); documented here once rather than on each handler.
fn too_many_failures(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let response = ResponseBuilder::new()
        .description("Too many failed authentications from this address; see Retry-After")
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
        )
        .build();
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/api/") {
            continue;
        }
        for op in [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch]
            .into_iter()
            .flatten()
        {
            op.responses.responses.insert("429".to_owned(), response.clone().into());
        }
    }
}

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    DOCUMENT.clone()
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "operations",
    responses(
        (status = 200, description = "The OpenAPI document", body = Object),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(DOCUMENT.clone())
}
