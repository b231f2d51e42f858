//! The sample contexts every template is checked with at load time: [`Renderer::sample_context`]
//! (every optional field filled in), its sparse variant (`sparse_context`: nullable fields
//! null, lists empty) and the variants taking other branches (`check_contexts`).

use serde_json::{Value, json};

use dashlight_core::kinds::Kind;

use super::Renderer;

impl Renderer {
    /// A realistic context of `kind` following the worker's context contract,
    /// with every optional field filled in. Used to check templates at load
    /// time and handy in tests.
    pub fn sample_context(kind: Kind) -> Value {
        let student = json!({
            "first_name": "Amelia",
            "last_name": "Hughes",
            "timezone": "Europe/London",
        });
        let instructor = json!({
            "first_name": "Daniel",
            "last_name": "Okafor",
            "timezone": "Europe/London",
        });
        let booking = |status: &str, start: &str, end: &str| {
            json!({
                "id": "0b6f3c1e-5a4d-4e2b-9c7a-1f2e3d4c5b6a",
                "start_time": start,
                "end_time": end,
                "pickup_location": "Leeds station, New Station Street entrance",
                "instructor_name": "Daniel Okafor",
                "student_name": "Amelia Hughes",
                "status": status,
            })
        };
        let previous = json!({
            "start_time": "2026-03-03T17:30:00Z",
            "end_time": "2026-03-03T18:30:00Z",
        });
        let confirmed = booking("confirmed", "2026-03-03T17:30:00Z", "2026-03-03T18:30:00Z");
        let moved = booking("confirmed", "2026-03-05T16:00:00Z", "2026-03-05T17:00:00Z");

        let (recipient, extra) = match kind {
            Kind::BookingConfirmed => (student, json!({ "booking": confirmed, "page_url": PAGE_URL })),
            Kind::LessonReminder => (
                student,
                json!({
                    "booking": confirmed,
                    "offset_label": "24 hours",
                    "page_url": PAGE_URL,
                    "confirm_url": "https://school.example/confirm/AAAAAAAAAAAqAAAAAAAAAAfN2m1s0aC9eU3bQxFvYc",
                }),
            ),
            Kind::AccessLink => (student, json!({ "page_url": PAGE_URL })),
            Kind::BookingCancelled => (
                student,
                json!({
                    "booking": booking("cancelled", "2026-03-03T17:30:00Z", "2026-03-03T18:30:00Z"),
                    "reason": "Your instructor is unwell",
                }),
            ),
            Kind::BookingRescheduled => (student, json!({ "booking": moved, "previous": previous })),
            Kind::BookingAlert => (
                instructor,
                json!({ "booking": moved, "change": "rescheduled", "previous": previous }),
            ),
            Kind::RecurringConflict => (
                student,
                json!({
                    "series": {
                        "id": "5d2c7e1a-8b3f-4a6d-b0c9-2e4f6a8b0c1d",
                        "instructor_name": "Daniel Okafor",
                        "student_name": "Amelia Hughes",
                    },
                    "date": "2026-03-10T17:30:00Z",
                    "reason": "the instructor is already booked",
                }),
            ),
            Kind::InvoiceIssued => (
                student,
                json!({
                    "invoice": {
                        "number": "INV-2026-0042",
                        "total_minor": 4500,
                        "currency": "GBP",
                        "issued_at": "2026-03-03T09:15:00Z",
                    },
                }),
            ),
            Kind::DailyAgenda => (
                instructor,
                json!({
                    "date": "2026-03-03T00:00:00Z",
                    "lessons": [
                        {
                            "start_time": "2026-03-03T09:00:00Z",
                            "end_time": "2026-03-03T10:00:00Z",
                            "student_name": "Amelia Hughes",
                            "pickup_location": "Leeds station, New Station Street entrance",
                        },
                        {
                            "start_time": "2026-03-03T11:30:00Z",
                            "end_time": "2026-03-03T13:30:00Z",
                            "student_name": "Harry Patel",
                            "pickup_location": null,
                        },
                        {
                            "start_time": "2026-03-03T17:30:00Z",
                            "end_time": "2026-03-03T18:30:00Z",
                            "student_name": "Chloe Evans",
                            "pickup_location": "14 Otley Road, Headingley",
                        },
                    ],
                    "count": 3,
                }),
            ),
            Kind::LessonReport => (
                student,
                json!({
                    "lesson": {
                        "date": "2026-03-03T17:30:00Z",
                        "instructor_name": "Daniel Okafor",
                        "notes": "Great progress today. Keep practising your mirror checks before changing lanes.",
                    },
                    "skills": [
                        { "name": "Roundabouts", "rating": 4, "notes": "Good lane choice on the big ones." },
                        { "name": "Parallel parking", "rating": 3, "notes": null },
                    ],
                    "progress": [
                        { "name": "Roundabouts", "level": "Confident", "percentage": 80 },
                        { "name": "Parallel parking", "level": "Developing", "percentage": 55 },
                    ],
                }),
            ),
            Kind::NewMessage => (
                student,
                json!({
                    "sender_name": "Daniel Okafor",
                    "preview": "Hi Amelia, could we start ten minutes earlier on Thursday? Let me know if that works for you.",
                    "thread_id": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d",
                }),
            ),
            Kind::TestReminder => (student, json!({ "test": { "date": "2026-03-10T09:14:00Z", "days_before": 7 } })),
            Kind::PackageLow => (
                student,
                json!({
                    "package": {
                        "name": "10-lesson bundle",
                        "lessons_remaining": 1,
                        "expires_at": "2026-06-30T22:59:59Z",
                    },
                }),
            ),
            Kind::CrmFollowUp => (
                json!({ "first_name": "Sarah", "last_name": "Whitfield", "timezone": "Europe/London" }),
                json!({
                    "contact": {
                        "name": "Oliver Bennett",
                        "email": "oliver.bennett@example.com",
                        "phone": "+447700900123",
                        "last_interaction_at": "2026-02-24T10:00:00Z",
                        "days_since": 7,
                    },
                }),
            ),
            Kind::SlotOffer => (
                student,
                json!({
                    "offer": {
                        "id": 42,
                        "start_time": "2026-03-05T16:00:00Z",
                        "end_time": "2026-03-05T17:00:00Z",
                        "instructor_name": "Daniel Okafor",
                        "pickup_location": "Leeds station, New Station Street entrance",
                        "expires_at": "2026-03-05T13:00:00Z",
                        "url": "https://school.example/offers/q3Zk1vT9yXb0cP4mL8nR2sW6eH5gJ7aD-uF_oI3tY1E",
                    },
                }),
            ),
            Kind::SlotTaken => (
                student,
                json!({
                    "offer": {
                        "id": 42,
                        "start_time": "2026-03-05T16:00:00Z",
                        "end_time": "2026-03-05T17:00:00Z",
                        "instructor_name": "Daniel Okafor",
                    },
                }),
            ),
            Kind::StudentConfirmed => (
                instructor,
                json!({ "booking": confirmed, "via": "push", "via_phrase": "from the push notification" }),
            ),
            Kind::ConfirmNudge => (
                student,
                json!({ "booking": confirmed, "offset_label": "12 hours", "student_phone": null }),
            ),
            Kind::UnconfirmedLesson => (
                instructor,
                json!({ "booking": confirmed, "offset_label": "3 hours", "student_phone": "+447700900123" }),
            ),
            Kind::RearrangeRequest => (
                instructor,
                json!({ "booking": confirmed, "reply": "R can we do Thursday instead?", "from": "+447700900123" }),
            ),
            Kind::InboundReply => (
                json!({ "first_name": "Greenway Driving School", "last_name": "", "timezone": "Europe/London" }),
                json!({
                    "booking": confirmed,
                    "reply": "Running 5 minutes late, sorry!",
                    "from": "+447700900123",
                    "sender_name": "Amelia Hughes",
                }),
            ),
        };

        let mut ctx = json!({
            "recipient": recipient,
            "school": { "name": "Greenway Driving School" },
        });
        if let (Some(ctx), Value::Object(extra)) = (ctx.as_object_mut(), extra) {
            ctx.extend(extra);
        }
        ctx
    }
}

/// A person's page link in the sample contexts (see `dashlight_core::access`).
const PAGE_URL: &str = "https://school.example/me/3f2a9c0e5b7d4e1f8a6c2b9d0e4f7a1c3f2a9c0e5b7d4e1f8a6c2b9d0e4f7a1c";

/// The contexts every template is rendered with at load time: the sample,
/// its sparse variant, and any other variant that takes a different branch.
pub(super) fn check_contexts(kind: Kind) -> Vec<Value> {
    let mut contexts = vec![Renderer::sample_context(kind), sparse_context(kind)];
    if kind == Kind::BookingAlert {
        let mut cancelled = Renderer::sample_context(kind);
        cancelled["change"] = json!("cancelled");
        cancelled["booking"]["status"] = json!("cancelled");
        contexts.push(cancelled);
    }
    contexts
}

/// The sample context with every nullable field null and every list empty,
/// so load-time checks also walk the `{{else}}` branches.
fn sparse_context(kind: Kind) -> Value {
    let mut ctx = Renderer::sample_context(kind);
    let nulls: &[&str] = match kind {
        Kind::BookingConfirmed => &["/booking/pickup_location", "/page_url"],
        Kind::LessonReminder => &["/booking/pickup_location", "/page_url", "/confirm_url"],
        Kind::BookingRescheduled => &["/booking/pickup_location"],
        Kind::BookingCancelled => &["/booking/pickup_location", "/reason"],
        Kind::BookingAlert => &["/booking/pickup_location", "/previous"],
        Kind::LessonReport => &["/lesson/notes"],
        Kind::PackageLow => &["/package/expires_at"],
        Kind::SlotOffer => &["/offer/pickup_location"],
        Kind::CrmFollowUp => &["/contact/email", "/contact/phone", "/contact/last_interaction_at"],
        Kind::StudentConfirmed => &["/booking/pickup_location", "/via_phrase"],
        Kind::RearrangeRequest | Kind::ConfirmNudge => &["/booking/pickup_location"],
        Kind::UnconfirmedLesson => &["/booking/pickup_location", "/student_phone"],
        Kind::InboundReply => &["/booking", "/sender_name"],
        _ => &[],
    };
    for pointer in nulls {
        if let Some(v) = ctx.pointer_mut(pointer) {
            *v = Value::Null;
        }
    }
    match kind {
        Kind::BookingAlert => ctx["change"] = json!("new"),
        Kind::DailyAgenda => {
            ctx["lessons"] = json!([]);
            ctx["count"] = json!(0);
        }
        Kind::LessonReport => {
            ctx["skills"] = json!([]);
            ctx["progress"] = json!([]);
        }
        Kind::TestReminder => ctx["test"]["days_before"] = json!(1),
        Kind::PackageLow => ctx["package"]["lessons_remaining"] = json!(0),
        Kind::CrmFollowUp => ctx["recipient"]["first_name"] = json!(""),
        _ => {}
    }
    ctx
}
