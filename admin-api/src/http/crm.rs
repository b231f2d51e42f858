//! CRM: `POST /api/crm/contacts` (a lead without a user account) and `POST /api/crm/interactions`
//! (a staff member's call, email, meeting, ... with a contact; it moves the contact's
//! `last_interaction_at`). Students get their contact when their user is created. Writes go
//! through `dashlight_core::crm`.

use axum::{Json, extract::State, http::StatusCode};
use chrono::{DateTime, Utc};
use dashlight_core::crm::{self, Contact, Interaction, NewContact, NewInteraction};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiJson, rfc3339},
};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_contact))
        .routes(routes!(create_interaction))
}

/// `POST /api/crm/contacts`: a lead.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ContactIn {
    /// Full name, 1 to 200 characters.
    #[schema(example = "Oliver Bennett")]
    pub name: String,
    /// Email address.
    pub email: Option<String>,
    /// E.164 phone number.
    #[schema(example = "+447700900123")]
    pub phone: Option<String>,
    /// Where the lead came from.
    #[schema(example = "website")]
    pub source: Option<String>,
}

/// A CRM contact.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ContactOut {
    /// `crm_contacts.id`.
    pub id: i64,
    /// The user, for a student.
    pub user_id: Option<i64>,
    /// Name.
    pub name: String,
    /// Email.
    pub email: Option<String>,
    /// Phone.
    pub phone: Option<String>,
    /// `lead`, `student` or `partner`.
    pub contact_type: String,
    /// `lead`, `active`, `passed`, `lapsed` or `lost`.
    pub lead_status: String,
    /// Succeeded payments so far, minor units.
    pub lifetime_value: i64,
    /// Its currency.
    pub currency: String,
    /// Source.
    pub source: Option<String>,
    /// The latest interaction.
    pub last_interaction_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
}

impl From<Contact> for ContactOut {
    fn from(c: Contact) -> Self {
        ContactOut {
            id: c.id,
            user_id: c.user_id,
            name: c.name,
            email: c.email,
            phone: c.phone,
            contact_type: c.contact_type,
            lead_status: c.lead_status.to_string(),
            lifetime_value: c.lifetime_value_minor,
            currency: c.currency,
            source: c.source,
            last_interaction_at: c.last_interaction_at,
            created_at: c.created_at,
        }
    }
}

/// Records a lead (no user account). A lead with no interaction for 7 days gets the school a
/// follow-up email.
#[utoipa::path(post, path = "/api/crm/contacts", tag = "crm", request_body = ContactIn,
    responses(
        (status = 201, description = "Recorded", body = ContactOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid value: name, email, phone", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create_contact(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<ContactIn>,
) -> Result<(StatusCode, Json<ContactOut>), ApiError> {
    let nc = NewContact {
        name: body.name,
        email: body.email,
        phone: body.phone,
        source: body.source,
    };
    let now = state.clock.now();
    let mut tx = state.pool.begin().await?;
    let c = crm::create_lead(&mut tx, nc, now).await?;
    tx.commit().await?;
    tracing::info!(contact_id = c.id, "lead recorded");
    Ok((StatusCode::CREATED, Json(c.into())))
}

/// `POST /api/crm/interactions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InteractionIn {
    /// `crm_contacts.id`.
    pub contact_id: i64,
    /// The staff member (`users.id`).
    pub staff_user_id: Option<i64>,
    /// `call`, `email`, `sms`, `meeting` or `note`.
    #[schema(example = "call")]
    pub interaction_type: String,
    /// What was said, at most 10 000 characters.
    pub notes: Option<String>,
    /// When it happened, RFC 3339 with offset; default now. Not in the future.
    #[serde(default, deserialize_with = "rfc3339::optional")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub interaction_date: Option<DateTime<Utc>>,
}

/// A recorded interaction.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InteractionOut {
    /// `crm_interactions.id`.
    pub id: i64,
    /// The contact.
    pub contact_id: i64,
    /// The staff member.
    pub staff_user_id: Option<i64>,
    /// Kind.
    pub interaction_type: String,
    /// When it happened.
    pub interaction_date: DateTime<Utc>,
    /// Notes.
    pub notes: Option<String>,
    /// The contact after it (its `last_interaction_at` moved forward).
    pub contact: ContactOut,
}

fn interaction_out(i: Interaction, contact: Contact) -> InteractionOut {
    InteractionOut {
        id: i.id,
        contact_id: i.contact_id,
        staff_user_id: i.staff_user_id,
        interaction_type: i.interaction_type,
        interaction_date: i.interaction_date,
        notes: i.notes,
        contact: contact.into(),
    }
}

/// Records a staff interaction with a contact; the contact's `last_interaction_at` moves forward
/// to it, which re-arms the 7-day follow-up of a lead.
#[utoipa::path(post, path = "/api/crm/interactions", tag = "crm", request_body = InteractionIn,
    responses(
        (status = 201, description = "Recorded", body = InteractionOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid value: unknown contact or staff user, type, date", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn create_interaction(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<InteractionIn>,
) -> Result<(StatusCode, Json<InteractionOut>), ApiError> {
    let ni = NewInteraction {
        contact_id: body.contact_id,
        staff_user_id: body.staff_user_id,
        interaction_type: body.interaction_type,
        notes: body.notes,
        interaction_date: body.interaction_date,
    };
    let now = state.clock.now();
    let mut tx = state.pool.begin().await?;
    let i = crm::record_interaction(&mut tx, ni, now).await?;
    let contact = crm::get(&mut tx, i.contact_id).await?;
    tx.commit().await?;
    tracing::info!(interaction_id = i.id, contact_id = i.contact_id, "crm interaction recorded");
    Ok((StatusCode::CREATED, Json(interaction_out(i, contact))))
}
