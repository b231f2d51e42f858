//! Lessons: `POST /api/bookings/{id}/complete` (the lesson, its skill ratings, the student's
//! recomputed progress and their `lesson_report`) and `POST /api/bookings/{id}/no-show`. Each in
//! one transaction through `dashlight_core::lessons`, with `now = state.clock.now()`.

use axum::{Json, extract::State};
use chrono::{DateTime, Utc};
use dashlight_core::lessons::{self, CompleteLesson, CompletedLesson, Lesson, LessonProgress, SkillProgress, SkillRating};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    AppState,
    error::{ApiError, ErrorBody},
    extract::{ApiJson, ApiPath},
    http::bookings::BookingOut,
};

pub(crate) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(complete_booking)).routes(routes!(no_show))
}

/// One skill category practised in the lesson.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SkillIn {
    /// `skill_categories.id` (the syllabus: cockpit drill, moving off, ... test readiness).
    pub skill_category_id: i64,
    /// 1 (introduced) to 5 (test standard).
    #[schema(minimum = 1, maximum = 5, example = 3)]
    pub rating: i16,
    /// What went well or needs work, at most 2000 characters.
    pub notes: Option<String>,
}

/// `POST /api/bookings/{id}/complete`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteIn {
    /// The instructor's notes on the lesson, at most 10 000 characters.
    pub notes: Option<String>,
    /// One rating per skill category practised (may be empty).
    pub skills: Vec<SkillIn>,
}

/// A completed lesson.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LessonOut {
    /// `lessons.id`.
    pub id: i64,
    /// The booking.
    pub booking_id: i64,
    /// `instructors.id`.
    pub instructor_id: i64,
    /// `students.id`.
    pub student_id: i64,
    /// The instructor's notes.
    pub notes: Option<String>,
    /// When it was recorded.
    pub completed_at: DateTime<Utc>,
}

impl From<Lesson> for LessonOut {
    fn from(l: Lesson) -> Self {
        LessonOut {
            id: l.id,
            booking_id: l.booking_id,
            instructor_id: l.instructor_id,
            student_id: l.student_id,
            notes: l.lesson_notes,
            completed_at: l.completed_at,
        }
    }
}

/// A rating given in the lesson (`lesson_progress`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct LessonProgressOut {
    /// `lesson_progress.id`.
    pub id: i64,
    /// `skill_categories.id`.
    pub skill_category_id: i64,
    /// The category's name.
    pub skill_category: String,
    /// 1 to 5.
    pub rating: i16,
    /// The instructor's notes.
    pub notes: Option<String>,
}

impl From<LessonProgress> for LessonProgressOut {
    fn from(p: LessonProgress) -> Self {
        LessonProgressOut {
            id: p.id,
            skill_category_id: p.skill_category_id,
            skill_category: p.skill_category,
            rating: p.progress_rating,
            notes: p.notes,
        }
    }
}

/// The student's standing in one skill category.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SkillProgressOut {
    /// `skill_categories.id`.
    pub skill_category_id: i64,
    /// The category's name.
    pub category_name: String,
    /// 0 (not assessed) to 5: the rounded mean of the last three ratings.
    pub current_level: i16,
    /// What the level means, e.g. `Competent`.
    pub level_name: String,
    /// Level × 20.
    pub progress_percentage: i16,
    /// The last lesson that rated it.
    pub last_assessed: Option<DateTime<Utc>>,
}

impl From<SkillProgress> for SkillProgressOut {
    fn from(p: SkillProgress) -> Self {
        SkillProgressOut {
            skill_category_id: p.skill_category_id,
            category_name: p.category_name,
            current_level: p.current_level,
            level_name: lessons::level_name(p.current_level).to_owned(),
            progress_percentage: p.progress_percentage,
            last_assessed: p.last_assessed,
        }
    }
}

/// The lesson, its ratings and the student's updated progress.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CompletedOut {
    /// The lesson.
    pub lesson: LessonOut,
    /// Its ratings, in syllabus order.
    pub progress: Vec<LessonProgressOut>,
    /// The student's progress in every category assessed so far, in syllabus order.
    pub student_progress: Vec<SkillProgressOut>,
}

impl From<CompletedLesson> for CompletedOut {
    fn from(c: CompletedLesson) -> Self {
        CompletedOut {
            lesson: c.lesson.into(),
            progress: c.progress.into_iter().map(Into::into).collect(),
            student_progress: c.student_progress.into_iter().map(Into::into).collect(),
        }
    }
}

/// Completes a confirmed booking: the lesson with its skill ratings, the student's recomputed
/// progress per rated category, and the student's lesson report, in one transaction.
#[utoipa::path(post, path = "/api/bookings/{id}/complete", tag = "lessons", request_body = CompleteIn,
    params(("id" = i64, Path, description = "bookings.id")),
    responses(
        (status = 200, description = "Completed", body = CompletedOut),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such booking", body = ErrorBody),
        (status = 409, description = "The booking is not confirmed (cancelled, completed or no-show)", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 415, description = "Not JSON", body = ErrorBody),
        (status = 422, description = "Invalid value: rating, unknown or repeated skill category, notes too long", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn complete_booking(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<i64>,
    ApiJson(body): ApiJson<CompleteIn>,
) -> Result<Json<CompletedOut>, ApiError> {
    let input = CompleteLesson {
        notes: body.notes,
        skills: body
            .skills
            .into_iter()
            .map(|s| SkillRating {
                skill_category_id: s.skill_category_id,
                rating: s.rating,
                notes: s.notes,
            })
            .collect(),
    };
    let now = state.clock.now();
    let mut tx = state.pool.begin().await?;
    let done = lessons::complete(&mut tx, id, input, now).await?;
    tx.commit().await?;
    tracing::info!(
        booking_id = id,
        lesson_id = done.lesson.id,
        skills = done.progress.len(),
        "lesson completed"
    );
    Ok(Json(done.into()))
}

/// Records that the student did not turn up to a confirmed booking; its pending reminders are
/// cancelled.
#[utoipa::path(post, path = "/api/bookings/{id}/no-show", tag = "lessons",
    params(("id" = i64, Path, description = "bookings.id")),
    responses(
        (status = 200, description = "Recorded", body = BookingOut),
        (status = 401, description = "No or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such booking", body = ErrorBody),
        (status = 409, description = "The booking is not confirmed", body = ErrorBody),
        (status = 503, description = "Database unavailable", body = ErrorBody),
    ),
    security(("bearer" = [])))]
pub async fn no_show(State(state): State<AppState>, ApiPath(id): ApiPath<i64>) -> Result<Json<BookingOut>, ApiError> {
    let now = state.clock.now();
    let mut tx = state.pool.begin().await?;
    let b = lessons::no_show(&mut tx, id, now).await?;
    tx.commit().await?;
    tracing::info!(booking_id = id, "no-show recorded");
    Ok(Json(b.into()))
}
