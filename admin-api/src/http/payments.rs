//! Payments and packages: `POST /api/payments` (a succeeded payment is invoiced by the
//! scheduler's invoice job; a package payment buys the package), `POST /api/lesson-packages`
//! (define a package) and `POST /api/students/{id}/packages` (a student buys one; bookings then
//! consume its lessons). Each in one transaction through `dashlight_core::payments` and
//! `packages`.

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use dashlight_core::{
    packages::{self, NewPackage, Package, Purchase},
    payments::{self, NewPayment, Payment},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiJson, ApiPath},
};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_payment))
        .routes(routes!(create_package))
        .routes(routes!(buy_package))
}

/// `POST /api/payments`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentIn {
    /// `students.id`.
    pub student_id: i64,
    /// The booking it pays for (the student's own).
    pub booking_id: Option<i64>,
    /// A `lesson_packages.id` it buys: a pending or succeeded payment creates the student's
    /// purchase of it.
    pub package_id: Option<i64>,
    /// Amount in minor units (pence), more than 0.
    #[schema(example = 4500)]
    pub amount: i64,
    /// ISO 4217 currency.
    #[schema(example = "GBP")]
    pub currency: String,
    /// `card`, `cash`, `bank_transfer` or `other`.
    #[schema(example = "card")]
    pub method: String,
    /// `pending`, `succeeded`, `failed` or `refunded`.
    #[schema(example = "succeeded")]
    pub status: String,
    /// The payment provider's reference.
    pub provider_ref: Option<String>,
}

/// A package purchase.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PurchaseOut {
    /// `package_purchases.id`.
    pub id: i64,
    /// `students.id`.
    pub student_id: i64,
    /// `lesson_packages.id`.
    pub package_id: i64,
    /// The package's name.
    pub package_name: String,
    /// Lessons bought.
    pub lessons_total: i32,
    /// Lessons not yet booked.
    pub lessons_remaining: i32,
    /// Bought.
    pub purchased_at: DateTime<Utc>,
    /// Valid until.
    pub expires_at: DateTime<Utc>,
    /// `active`, `used_up`, `expired` or `refunded`.
    pub status: String,
}

impl From<Purchase> for PurchaseOut {
    fn from(p: Purchase) -> Self {
        PurchaseOut {
            id: p.id,
            student_id: p.student_id,
            package_id: p.package_id,
            package_name: p.package_name,
            lessons_total: p.lessons_total,
            lessons_remaining: p.lessons_remaining,
            purchased_at: p.purchased_at,
            expires_at: p.expires_at,
            status: p.status.as_str().to_owned(),
        }
    }
}

/// A recorded payment.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PaymentOut {
    /// `payments.id`.
    pub id: i64,
    /// `students.id`.
    pub student_id: i64,
    /// The booking paid for.
    pub booking_id: Option<i64>,
    /// The purchase it paid for (created by this payment when a package was given).
    pub purchase_id: Option<i64>,
    /// That purchase.
    pub purchase: Option<PurchaseOut>,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217.
    pub currency: String,
    /// Method.
    pub method: String,
    /// Status; a `succeeded` one gets its invoice from the invoice job.
    pub status: String,
    /// Provider reference.
    pub provider_ref: Option<String>,
    /// When it succeeded.
    pub paid_at: Option<DateTime<Utc>>,
    /// Recorded.
    pub created_at: DateTime<Utc>,
}

fn payment_out(p: Payment, purchase: Option<Purchase>) -> PaymentOut {
    PaymentOut {
        id: p.id,
        student_id: p.student_id,
        booking_id: p.booking_id,
        purchase_id: p.purchase_id,
        purchase: purchase.map(Into::into),
        amount: p.amount_minor,
        currency: p.currency,
        method: p.method,
        status: p.status.as_str().to_owned(),
        provider_ref: p.provider_ref,
        paid_at: p.paid_at,
        created_at: p.created_at,
    }
}

/// Records a payment. With `package_id` (and status pending or succeeded) it buys the package:
/// the student's purchase is created (lessons from the package, valid for its validity days) and
/// linked. A succeeded payment is invoiced by the scheduler's invoice job.
#[utoipa::path(post, path = "/api/payments", tag = "payments", request_body = PaymentIn,
    responses(
        (status = 201, description = "Recorded", body = PaymentOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid value: amount, currency, method, status, unknown student/booking/package", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create_payment(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<PaymentIn>,
) -> Result<(StatusCode, Json<PaymentOut>), ApiError> {
    let np = NewPayment {
        student_id: body.student_id,
        booking_id: body.booking_id,
        package_id: body.package_id,
        amount_minor: body.amount,
        currency: body.currency,
        method: body.method,
        status: body.status,
        provider_ref: body.provider_ref,
    };
    let now = state.clock.now();
    let mut tx = state.pool.begin().await?;
    let p = payments::record(&mut tx, np, now).await?;
    let purchase = match p.purchase_id {
        Some(id) => Some(packages::get_purchase(&mut tx, id).await?),
        None => None,
    };
    tx.commit().await?;
    tracing::info!(payment_id = p.id, status = %p.status, purchase_id = ?p.purchase_id, "payment recorded");
    Ok((StatusCode::CREATED, Json(payment_out(p, purchase))))
}

/// `POST /api/lesson-packages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PackageIn {
    /// Unique name.
    #[schema(example = "10-lesson bundle")]
    pub name: String,
    /// Lessons a purchase gives, 1 to 500.
    #[schema(example = 10)]
    pub lessons_included: i32,
    /// Price in minor units (pence), not negative.
    #[schema(example = 40000)]
    pub price: i64,
    /// ISO 4217 currency, default `GBP`.
    pub currency: Option<String>,
    /// Days a purchase stays valid, 1 to 3660.
    #[schema(example = 180)]
    pub validity_days: i32,
}

/// A lesson package.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct PackageOut {
    /// `lesson_packages.id`.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Lessons a purchase gives.
    pub lessons_included: i32,
    /// Price in minor units.
    pub price: i64,
    /// ISO 4217.
    pub currency: String,
    /// Days a purchase stays valid.
    pub validity_days: i32,
    /// On sale.
    pub active: bool,
    /// Created.
    pub created_at: DateTime<Utc>,
}

impl From<Package> for PackageOut {
    fn from(p: Package) -> Self {
        PackageOut {
            id: p.id,
            name: p.name,
            lessons_included: p.lessons_included,
            price: p.price_minor,
            currency: p.currency,
            validity_days: p.validity_days,
            active: p.active,
            created_at: p.created_at,
        }
    }
}

/// Defines a lesson package students can buy.
#[utoipa::path(post, path = "/api/lesson-packages", tag = "payments", request_body = PackageIn,
    responses(
        (status = 201, description = "Defined", body = PackageOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 409, description = "A package with this name exists", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid value", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create_package(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<PackageIn>,
) -> Result<(StatusCode, Json<PackageOut>), ApiError> {
    let np = NewPackage {
        name: body.name,
        lessons_included: body.lessons_included,
        price_minor: body.price,
        currency: body.currency,
        validity_days: body.validity_days,
    };
    let mut tx = state.pool.begin().await?;
    let p = packages::define(&mut tx, np).await?;
    tx.commit().await?;
    tracing::info!(package_id = p.id, "lesson package defined");
    Ok((StatusCode::CREATED, Json(p.into())))
}

/// `POST /api/students/{id}/packages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuyPackageIn {
    /// `lesson_packages.id`.
    pub package_id: i64,
}

/// A student buys a package: the purchase, with the package's lessons, valid for its validity
/// days. Their bookings then consume its lessons, oldest purchase first; the payment may be
/// recorded separately.
#[utoipa::path(post, path = "/api/students/{id}/packages", tag = "payments", request_body = BuyPackageIn,
    params(("id" = i64, Path, description = "students.id")),
    responses(
        (status = 201, description = "Bought", body = PurchaseOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such student", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "No such package on sale", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn buy_package(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<BuyPackageIn>,
) -> Result<(StatusCode, Json<PurchaseOut>), ApiError> {
    let now = state.clock.now();
    let mut tx = state.pool.begin().await?;
    let p = packages::purchase(&mut tx, id, body.package_id, now).await?;
    tx.commit().await?;
    tracing::info!(purchase_id = p.id, student_id = id, "package bought");
    Ok((StatusCode::CREATED, Json(p.into())))
}
