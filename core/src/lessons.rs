//! Lessons and skill tracking: completing a confirmed booking writes the `lessons` row, one
//! `lesson_progress` and one `lesson_skill_progress` row per rated skill category, recomputes
//! the student's `student_progress` of every rated category and sends the student their
//! `lesson_report` — all in the caller's transaction. A no-show is recorded as such. Owns writes
//! to `lessons`, `lesson_progress`, `lesson_skill_progress` and `student_progress`; the booking's
//! own status change is [`bookings::finish`]'s. An erased student's attachment files are handed
//! to [`crate::files`] for deletion from disk ([`erase_person`]).
//!
//! A category's level is the rounded mean of the student's last three ratings in it (1–5), its
//! percentage the level × 20.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sqlx::{FromRow, PgConnection};

use crate::{
    analytics,
    bookings::{self, Booking, Outcome},
    crm,
    error::DomainError,
    kinds::Kind,
    notify::{self, NewNotification},
};

/// Ratings that make up a category's level.
pub const LEVEL_WINDOW: i64 = 3;

/// Most skill ratings one lesson may carry.
pub const MAX_SKILLS: usize = 50;

/// What a level means, for people: index = level (0–5).
pub const LEVEL_NAMES: [&str; 6] = [
    "Not yet assessed",
    "Introduced",
    "Developing",
    "Competent",
    "Confident",
    "Test ready",
];

/// The name of a level (0–5).
pub fn level_name(level: i16) -> &'static str {
    LEVEL_NAMES[level.clamp(0, 5) as usize]
}

/// The instructor's rating of one skill category in a lesson.
#[derive(Debug, Clone)]
pub struct SkillRating {
    /// `skill_categories.id`.
    pub skill_category_id: i64,
    /// 1 to 5.
    pub rating: i16,
    /// What to work on, at most 2000 characters.
    pub notes: Option<String>,
}

/// A lesson to record.
#[derive(Debug, Clone, Default)]
pub struct CompleteLesson {
    /// The instructor's notes, at most 10 000 characters.
    pub notes: Option<String>,
    /// One rating per skill category practised.
    pub skills: Vec<SkillRating>,
}

/// A `lessons` row.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct Lesson {
    /// Id.
    pub id: i64,
    /// The booking.
    pub booking_id: i64,
    /// Instructor (`instructors.id`).
    pub instructor_id: i64,
    /// Student (`students.id`).
    pub student_id: i64,
    /// The instructor's notes.
    pub lesson_notes: Option<String>,
    /// When it was recorded as completed.
    pub completed_at: DateTime<Utc>,
}

/// A `lesson_progress` row, with the category's id.
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct LessonProgress {
    /// Id.
    pub id: i64,
    /// `skill_categories.id`.
    pub skill_category_id: i64,
    /// The category's name.
    pub skill_category: String,
    /// 1 to 5.
    pub progress_rating: i16,
    /// The instructor's notes.
    pub notes: Option<String>,
}

/// A student's standing in one skill category (`student_progress`).
#[derive(Debug, Clone, FromRow, Serialize)]
pub struct SkillProgress {
    /// `skill_categories.id`.
    pub skill_category_id: i64,
    /// The category's name.
    pub category_name: String,
    /// 0 (not assessed) to 5.
    pub current_level: i16,
    /// Level × 20.
    pub progress_percentage: i16,
    /// The last lesson that rated it.
    pub last_assessed: Option<DateTime<Utc>>,
}

/// What completing a lesson produced.
#[derive(Debug, Clone, Serialize)]
pub struct CompletedLesson {
    /// The lesson.
    pub lesson: Lesson,
    /// Its progress rows, in syllabus order.
    pub progress: Vec<LessonProgress>,
    /// The student's progress in every category assessed so far, in syllabus order.
    pub student_progress: Vec<SkillProgress>,
}

fn validate(input: &CompleteLesson) -> Result<(), DomainError> {
    if input.notes.as_ref().is_some_and(|n| n.chars().count() > 10_000) {
        return Err(DomainError::invalid("notes", "at most 10000 characters"));
    }
    if input.skills.len() > MAX_SKILLS {
        return Err(DomainError::invalid("skills", format!("at most {MAX_SKILLS} ratings")));
    }
    let mut seen = HashSet::new();
    for (i, s) in input.skills.iter().enumerate() {
        if !(1..=5).contains(&s.rating) {
            return Err(DomainError::invalid(format!("skills[{i}].rating"), "expected 1 to 5"));
        }
        if s.notes.as_ref().is_some_and(|n| n.chars().count() > 2000) {
            return Err(DomainError::invalid(format!("skills[{i}].notes"), "at most 2000 characters"));
        }
        if !seen.insert(s.skill_category_id) {
            return Err(DomainError::invalid(
                format!("skills[{i}].skill_category_id"),
                "rated twice in one lesson",
            ));
        }
    }
    Ok(())
}

/// Completes a confirmed booking (anything else is a conflict): the lesson, its progress rows,
/// the student's recomputed progress, the `lesson_report`, the `booking_completed` event.
pub async fn complete(
    conn: &mut PgConnection,
    booking_id: i64,
    input: CompleteLesson,
    now: DateTime<Utc>,
) -> Result<CompletedLesson, DomainError> {
    validate(&input)?;
    let ids: Vec<i64> = input.skills.iter().map(|s| s.skill_category_id).collect();
    let categories: HashMap<i64, (String, i32)> = sqlx::query!(
        "SELECT id, category_name, skill_order FROM skill_categories WHERE id = ANY($1) AND active",
        &ids,
    )
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|r| (r.id, (r.category_name, r.skill_order)))
    .collect();
    if let Some(i) = ids.iter().position(|id| !categories.contains_key(id)) {
        return Err(DomainError::invalid(
            format!("skills[{i}].skill_category_id"),
            "no such active skill category",
        ));
    }

    let (booking, student, instructor) = bookings::finish(conn, booking_id, Outcome::Completed).await?;
    let progress_data = json!({
        "skills": input.skills.iter().map(|s| json!({
            "skill_category_id": s.skill_category_id,
            "name": categories[&s.skill_category_id].0,
            "rating": s.rating,
            "notes": s.notes,
        })).collect::<Vec<_>>(),
    });
    let lesson: Lesson = sqlx::query_as!(
        Lesson,
        "INSERT INTO lessons (booking_id, instructor_id, student_id, lesson_notes, progress_data, completed_at)
         VALUES ($1, $2, $3, $4, $5, $6)
         RETURNING id, booking_id, instructor_id, student_id, lesson_notes, completed_at",
        booking.id,
        booking.instructor_id,
        booking.student_id,
        input.notes,
        progress_data,
        now,
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;

    let mut skills = input.skills.clone();
    skills.sort_by_key(|s| categories[&s.skill_category_id].1);
    let names: Vec<String> = skills.iter().map(|s| categories[&s.skill_category_id].0.clone()).collect();
    let cat_ids: Vec<i64> = skills.iter().map(|s| s.skill_category_id).collect();
    let ratings: Vec<i16> = skills.iter().map(|s| s.rating).collect();
    let notes: Vec<Option<String>> = skills.iter().map(|s| s.notes.clone()).collect();
    let ids: HashMap<String, i64> = sqlx::query!(
        "INSERT INTO lesson_progress (lesson_id, skill_category, progress_rating, notes, created_at)
         SELECT $1, n, r, t, $5 FROM unnest($2::text[], $3::smallint[], $4::text[]) AS x(n, r, t)
         RETURNING skill_category, id",
        lesson.id,
        &names,
        &ratings,
        &notes as &[Option<String>],
        now,
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(DomainError::from_db)?
    .into_iter()
    .map(|r| (r.skill_category, r.id))
    .collect();
    sqlx::query!(
        "INSERT INTO lesson_skill_progress (lesson_id, skill_category_id, skill_rating, instructor_notes, created_at)
         SELECT $1, c, r, t, $5 FROM unnest($2::bigint[], $3::smallint[], $4::text[]) AS x(c, r, t)",
        lesson.id,
        &cat_ids,
        &ratings,
        &notes as &[Option<String>],
        now,
    )
    .execute(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    let mut progress: Vec<LessonProgress> = Vec::with_capacity(skills.len());
    for (i, s) in skills.iter().enumerate() {
        progress.push(LessonProgress {
            id: ids.get(&names[i]).copied().unwrap_or_default(),
            skill_category_id: s.skill_category_id,
            skill_category: names[i].clone(),
            progress_rating: s.rating,
            notes: s.notes.clone(),
        });
    }

    // Each rated category: the rounded mean of the student's last three ratings in it.
    sqlx::query!(
        "INSERT INTO student_progress (student_id, skill_category_id, current_level, progress_percentage, last_assessed, updated_at)
         SELECT $1, c.id, x.level, (x.level * 20)::smallint, $3, $3
         FROM unnest($2::bigint[]) AS c(id)
         CROSS JOIN LATERAL (
             SELECT round(avg(last.skill_rating))::smallint AS level FROM (
                 SELECT lsp.skill_rating FROM lessons l JOIN lesson_skill_progress lsp ON lsp.lesson_id = l.id
                 WHERE l.student_id = $1 AND lsp.skill_category_id = c.id
                 ORDER BY l.completed_at DESC, l.id DESC LIMIT $4) last) x
         ON CONFLICT (student_id, skill_category_id) DO UPDATE SET current_level = EXCLUDED.current_level,
             progress_percentage = EXCLUDED.progress_percentage, last_assessed = EXCLUDED.last_assessed, updated_at = EXCLUDED.updated_at",
        booking.student_id,
        &cat_ids,
        now,
        LEVEL_WINDOW,
    )
    .execute(&mut *conn)
    .await
    .map_err(DomainError::from_db)?;
    let student_progress = student_progress(conn, booking.student_id).await?;

    let mut n = NewNotification::to_user(Kind::LessonReport, student.user_id, format!("lesson_report:{}", booking.id), now);
    n.title = "Your lesson report".into();
    n.content = format!("How your lesson with {} went.", instructor.name);
    n.data = json!({
        "lesson": {
            "id": lesson.id,
            "booking_id": booking.id,
            "date": booking.start_time.to_rfc3339(),
            "instructor_name": instructor.name,
            "notes": input.notes,
        },
        "skills": progress.iter().map(|p| json!({"name": p.skill_category, "rating": p.progress_rating, "notes": p.notes})).collect::<Vec<_>>(),
        "progress": student_progress.iter().map(|p| json!({
            "name": p.category_name,
            "level": level_name(p.current_level),
            "percentage": p.progress_percentage,
        })).collect::<Vec<_>>(),
    });
    n.booking_id = Some(booking.id);
    notify::create(conn, n).await?;
    crm::mark_active(conn, student.user_id).await?;
    analytics::record(
        conn,
        Some(student.user_id),
        "booking_completed",
        json!({"booking_id": booking.id, "lesson_id": lesson.id, "instructor_id": booking.instructor_id, "skills_rated": progress.len()}),
        now,
    )
    .await?;
    Ok(CompletedLesson {
        lesson,
        progress,
        student_progress,
    })
}

/// A student's progress in every category assessed so far, in syllabus order.
pub async fn student_progress(conn: &mut PgConnection, student_id: i64) -> Result<Vec<SkillProgress>, sqlx::Error> {
    sqlx::query_as!(
        SkillProgress,
        "SELECT sp.skill_category_id, sc.category_name, sp.current_level, sp.progress_percentage, sp.last_assessed
         FROM student_progress sp JOIN skill_categories sc ON sc.id = sp.skill_category_id
         WHERE sp.student_id = $1 ORDER BY sc.skill_order",
        student_id,
    )
    .fetch_all(conn)
    .await
}

/// Records a confirmed booking as a no-show (anything else is a conflict): its pending reminders
/// are cancelled, the `booking_no_show` event written.
pub async fn no_show(conn: &mut PgConnection, booking_id: i64, now: DateTime<Utc>) -> Result<Booking, DomainError> {
    let (booking, student, _) = bookings::finish(conn, booking_id, Outcome::NoShow).await?;
    analytics::record(
        conn,
        Some(student.user_id),
        "booking_no_show",
        json!({"booking_id": booking.id, "instructor_id": booking.instructor_id}),
        now,
    )
    .await?;
    Ok(booking)
}

/// What [`erase_person`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Erased {
    /// Rows changed.
    pub rows: u64,
    /// Attachment files whose deletion from disk was requested ([`crate::files`]).
    pub attachment_files: u64,
}

/// Erasure: a student's lessons keep their dates and skill ratings; the instructor's notes about
/// them (the lesson's, each skill's, in the progress data) and attachments go: every attachment's
/// path is first recorded for deletion from disk ([`crate::files::request_deletion`], in the same
/// transaction), then the lessons' lists are emptied. An instructor's name is taken out of the
/// notes of the lessons they taught.
pub async fn erase_person(conn: &mut PgConnection, e: &crate::privacy::Erasing) -> Result<Erased, sqlx::Error> {
    // The lessons are locked while their paths are read, so none is added before they are emptied.
    let paths = sqlx::query_scalar!(
        r#"SELECT coalesce(array_agg(DISTINCT a) FILTER (WHERE a <> ''), '{}') AS "paths!"
           FROM (SELECT attachments FROM lessons WHERE student_id = $1 AND cardinality(attachments) > 0 FOR UPDATE) AS l,
                unnest(l.attachments) AS a"#,
        e.student_id,
    )
    .fetch_one(&mut *conn)
    .await?;
    let attachment_files = crate::files::request_deletion(conn, &paths).await?;
    let mut n = sqlx::query!(
        r#"UPDATE lessons
           SET lesson_notes = NULL, attachments = '{}',
               progress_data = CASE WHEN jsonb_typeof(progress_data -> 'skills') = 'array'
                   THEN jsonb_set(progress_data, '{skills}',
                                  coalesce((SELECT jsonb_agg(s - 'notes') FROM jsonb_array_elements(progress_data -> 'skills') AS s), '[]'))
                   ELSE progress_data END
           WHERE student_id = $1"#,
        e.student_id,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    n += sqlx::query!(
        "UPDATE lessons SET lesson_notes = erase_needles(lesson_notes, $2, $3),
                            progress_data = erase_needles_jsonb(progress_data, $2, $3)
         WHERE instructor_id = $1",
        e.instructor_id,
        &e.needles,
        e.pseudonym,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    n += sqlx::query!(
        "UPDATE lesson_progress SET notes = NULL WHERE notes IS NOT NULL AND lesson_id IN (SELECT id FROM lessons WHERE student_id = $1)",
        e.student_id,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    n += sqlx::query!(
        "UPDATE lesson_skill_progress SET instructor_notes = NULL
         WHERE instructor_notes IS NOT NULL AND lesson_id IN (SELECT id FROM lessons WHERE student_id = $1)",
        e.student_id,
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(Erased { rows: n, attachment_files })
}
