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
    }
}

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(openapi_json))
}

static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(|| {
    OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .merge(crate::api_routes())
        .merge(crate::open_routes())
        .into_openapi()
});

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
